"""The GPU check's summary: ``python bench/gpu_check_summary.py RESULTS_DIR > summary.json``.

Reads the step records (``steps.jsonl``, one line per step, written by ``gpu_check.sh``) and each step's
outputs, and writes one JSON object: the run (mode, deadline, total seconds) and per step its status, seconds,
limit and headline numbers -- test counts and failures from the junit files, ms and TFLOP/s per benchmark row,
ms per step and weight bandwidth per generation pass, the GPU and the available backends. A short table goes to
stderr (the device tool's reply shows the end of the output).
"""

from __future__ import annotations

import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def junit(path: Path) -> dict:
    """Counts and the first failures of a junit file."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    failed = [f"{case.get('classname')}::{case.get('name')}" for case in root.iter("testcase")
              if case.find("failure") is not None or case.find("error") is not None]
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return {**counts, "failed": failed[:20]}


def bench_rows(path: Path) -> dict:
    """``case/impl -> {ms, tflops}`` (or the reason it was skipped) of a kernel benchmark's rows."""
    out = {}
    for r in json.loads(path.read_text()):
        key = f"{r.get('case')}/{r.get('impl')}"
        if "skipped" in r:
            out[key] = {"skipped": r["skipped"][:120]}
        else:
            out[key] = {"ms": round(r["seconds"] * 1e3, 4), "tflops": round(r.get("useful_tflops", 0.0), 3)}
    return out


def generation_rows(path: Path) -> dict:
    """``pass/schedule -> {steps, ms per step, ...}`` and super-resolution seconds per frame."""
    out = {}
    for r in json.loads(path.read_text()):
        if r.get("bench") == "super_resolution":
            out[f"super_resolution/{r['backend']}"] = {"frames": r["frames"],
                                                       "s_per_frame": round(r["seconds_per_frame"], 4)}
        else:
            out[f"{r['pass']}/{r['schedule']}"] = {
                "steps": r["forward_steps"], "ms_per_step": round(r["ms_per_step"], 3),
                "weight_gbytes_per_s": round(r["weight_gbytes_per_s"], 1),
                "time_to_first_frame_s": round(r["time_to_first_frame_s"], 3)}
    return out


def serving_rows(path: Path) -> dict:
    """``n/mode -> {wall, speedup over serial, p50 end-to-end, tokens equal to serial}``."""
    return {f"n{r['n']}/{r['mode']}": {"wall_s": round(r["wall_s"], 2),
                                       "speedup_vs_serial": round(r["speedup_vs_serial"] or 0, 2),
                                       "p50_e2e_s": round(r["p50_e2e_s"] or 0, 2), "tokens_match": r["tokens_match"]}
            for r in json.loads(path.read_text())}


def profile_rows(path: Path) -> dict:
    """The step's summary and its ten costliest kernels (or operators)."""
    rows = json.loads(path.read_text())
    step = next((r for r in rows if r["name"] == "(step)"), None)
    if step is None:
        return {"output": "no summary row"}
    keep = ("step_ms", "busy_ms", "launches_per_step", "idle_fraction", "weight_floor_ms", "by_kind_ms")
    return {**{k: step[k] for k in keep},
            "top": [[r["name"][:80], round(r["us_per_step"], 1), r["calls_per_step"]] for r in rows[1:11]]}


def text_headline(name: str, text: str) -> dict:
    if name == "ctest":
        m = re.search(r"(\d+)% tests passed, (\d+) tests failed out of (\d+)", text)
        return {"passed_percent": int(m[1]), "failed": int(m[2]), "total": int(m[3])} if m else {}
    if name == "info":  # per device: the backends that run there
        devices = re.split(r"^attention backends on (\S+):$", text, flags=re.M)
        return {"available": {dev: re.findall(r"^\s+yes\s+(\S+)", part, re.M)
                              for dev, part in zip(devices[1::2], devices[2::2], strict=True)},
                "lines": text.splitlines()[:3]}
    if name == "gpu":
        return {"device": [line.strip() for line in text.splitlines()[:3]]}
    return {}


OUTPUTS = {  # step -> the files its headline is read from: the GPU run's name, then the dry run's
    "kernel-tests": ["kernel-tests.xml"], "engine-gpu-tests": ["engine-gpu-tests.xml"],
    "bench-window": ["attention-bf16.json", "attention-cpu.json"], "bench-window-fp16": ["attention-fp16.json"],
    "bench-flex": ["attention-bf16-flex.json"],
    "bench-local": ["local-attention-bf16.json", "local-attention-cpu.json"],
    "generation-medium": ["generation-medium.json", "generation-tiny.json"],
    "generation-real": ["generation-real.json", "generation-tiny-sr.json"],
    "serving-medium": ["serving-medium.json"],
    "profile-real": ["step-profile-real.json", "step-profile-tiny.json"],
}


def headline(name: str, results: Path) -> dict:
    if name in OUTPUTS:
        path = next((results / f for f in OUTPUTS[name] if (results / f).is_file()), None)
        if path is None:
            return {"output": "missing"}
        if path.suffix == ".xml":
            return junit(path)
        if name.startswith("serving"):
            return serving_rows(path)
        if name.startswith("profile"):
            return profile_rows(path)
        return generation_rows(path) if name.startswith("generation") else bench_rows(path)
    log = results / f"{name}.txt"
    return text_headline(name, log.read_text(errors="replace")) if log.is_file() else {}


def main(argv: list[str]) -> int:
    results = Path(argv[1])
    run = json.loads((results / "run.json").read_text()) if (results / "run.json").is_file() else {}
    steps = [json.loads(line) for line in (results / "steps.jsonl").read_text().splitlines() if line.strip()]
    for s in steps:
        if s["status"] != "skipped":
            s["headline"] = headline(s["name"], results)
    end = max((s["start_s"] + s["seconds"] for s in steps), default=0)
    summary = {**run, "seconds": round(end, 1), "steps": steps}
    json.dump(summary, sys.stdout, indent=1)
    print(file=sys.stderr)
    print(f"{'step':20s} {'status':8s} {'start':>6s} {'seconds':>8s} {'limit':>6s}  note", file=sys.stderr)
    for s in steps:
        note = s.get("reason") or ""
        h = s.get("headline", {})
        if "tests" in h:
            note = f"{h['passed']} passed, {h['failures'] + h['errors']} failed, {h['skipped']} skipped"
        print(f"{s['name']:20s} {s['status']:8s} {s['start_s']:6.0f} {s['seconds']:8.1f} {s['limit_s']:6.0f}  {note}",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
