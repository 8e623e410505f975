"""Command line: ``python -m cogvideo_engine {generate,profile,serve,score,convert,info}`` (also
``cogvideo-engine``)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from .generation import settings as defaults
from .generation.scheduler import SCHEDULES

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _progress_printer(every: int):
    """Progress on stderr: one rewritten line on a terminal, a line per report otherwise."""
    start = time.perf_counter()
    tty = sys.stderr.isatty()

    def report(done: int, total: int):
        if done % every == 0 or done == total:
            rate = done / max(time.perf_counter() - start, 1e-9)
            line = f"  step {done}/{total}  ({rate:.0f} steps/s)"
            if tty:
                print("\r" + line, end="\n" if done == total else "", file=sys.stderr, flush=True)
            else:
                print(line, file=sys.stderr, flush=True)
    return report


def cmd_score(args) -> int:
    from cogvideo_engine.kernels.rules import Pass

    from .generation.scoring import teacher_forced_logits
    from .io.checkpoints import load_model
    from .io.default_assets import default_model_path

    pass_ = Pass.parse(args.stage)
    path = args.model or default_model_path(pass_.model_stage)
    t0 = time.perf_counter()
    model = load_model(path, dtype=DTYPES[args.dtype], device=args.device)
    load_s = time.perf_counter() - t0
    frame_len = model.config.geometry.frame_len
    gen = torch.Generator().manual_seed(args.seed)
    text = torch.randint(20100, 83822, (args.batch, args.text_len), generator=gen)  # English-range text ids
    given = torch.randint(0, 20000, (args.batch, pass_.num_given, frame_len), generator=gen)
    num_targets = args.frames or pass_.max_targets
    target = torch.randint(0, 20000, (args.batch, num_targets, frame_len), generator=gen)
    print(f"model {path} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M params, "
          f"loaded in {load_s:.2f} s); pass {pass_.value}, {num_targets} target frame(s), batch {args.batch}",
          file=sys.stderr)
    t0 = time.perf_counter()
    out = teacher_forced_logits(model, pass_, text, given, target, text_bias=args.text_bias,
                                progress=None if args.quiet else _progress_printer(100),
                                backend=None if args.backend == "auto" else args.backend)
    score_s = time.perf_counter() - t0
    nll = out.frame_nll()
    result = {"model": str(path), "pass": pass_.value, "backend": args.backend, "batch": args.batch,
              "target_frames": num_targets,
              "frame_nll": nll.tolist(), "mean_nll": float(nll.mean()), "seconds": round(score_s, 3),
              "steps": out.logits.shape[1], "steps_per_s": round(out.logits.shape[1] / score_s, 1)}
    if args.json:
        print(json.dumps(result))
    else:
        for b in range(args.batch):
            frames = "  ".join(f"{v:.3f}" for v in result["frame_nll"][b])
            print(f"sample {b}: NLL per target frame (nats/token): {frames}")
        print(f"mean NLL {result['mean_nll']:.4f}; {result['steps']} cached steps in {score_s:.2f} s "
              f"({result['steps_per_s']} steps/s)")
    return 0


def _load_engine(args):
    """The Engine the engine flags (:func:`_add_engine_args`) describe."""
    from .api import Engine

    kwargs = dict(device=args.device, dtype=DTYPES[args.dtype],
                  decoder_dtype=DTYPES[args.decoder_dtype] if args.decoder_dtype else None, offload=args.offload,
                  backend=None if args.backend == "auto" else args.backend, dsr=args.dsr,
                  tensor_parallel=args.tensor_parallel)
    if args.model_root:
        return Engine.from_pretrained(args.model_root, **kwargs)
    print("using the embedded default model: tiny, RANDOM weights (the output is noise, not a video of the "
          "prompt); --model-root points at the released CogVideo folder", file=sys.stderr)
    return Engine.default(**kwargs)


def cmd_serve(args) -> int:
    import functools

    try:
        from .service.server import serve
    except ImportError as error:
        raise RuntimeError(f"serve needs the service extra: pip install 'cogvideo-engine[serve]' ({error})") from None
    model_id = Path(args.model_root).name if args.model_root else "cogvideo-default"
    serve(functools.partial(_load_engine, args), host=args.host, port=args.port, store=args.store,
          api_key=args.api_key, allow_unauthenticated=args.allow_unauthenticated, log_level=args.log_level,
          model_id=model_id, max_queued=args.max_queued,
          retention_s=None if args.retention_hours <= 0 else args.retention_hours * 3600.0,
          shutdown_timeout_s=args.shutdown_timeout)
    return 0


def cmd_generate(args) -> int:
    from .api import SamplingParams
    from .io.export import upscale_nearest, write_frames, write_gif, write_mp4, write_tokens

    if not args.prompt and not args.prompt_file:
        raise ValueError("give a prompt or --prompt-file")
    if args.prompt:
        prompts = [args.prompt]
    else:
        with open(args.prompt_file, encoding="utf-8") as f:
            prompts = [line.strip() for line in f if line.strip()]
    # the request's settings are checked before the models load
    params = SamplingParams(seed=args.seed, num_samples=args.samples, only_first_stage=args.only_first_stage,
                            use_guidance_stage1=not args.no_guidance_stage1, temperature=args.temperature,
                            top_k=args.top_k, temperature2=args.coglm_temperature2,
                            guidance_alpha=args.guidance_alpha, schedule=args.schedule,
                            max_batch=args.max_inference_batch_size, super_resolution=args.super_resolution,
                            sr_max_batch=args.sr_max_batch)
    engine = _load_engine(args)
    bars = {}

    def progress(phase, done, total):
        if args.quiet:
            return
        from tqdm import tqdm

        for other in [p for p in bars if p != phase]:  # a new phase: the previous one is over
            bars.pop(other).close()
        bar = bars.get(phase)
        if bar is None or bar.total != total or done < bar.n:
            if bar is not None:
                bar.close()
            unit = "frame" if phase == "decode" else "token"
            bar = bars[phase] = tqdm(total=total, desc=phase, unit=unit, file=sys.stderr, leave=False)
        bar.update(done - bar.n)

    resume = None
    if args.stage1_tokens:
        from .io.export import read_tokens
        from .generation.pipeline import STAGE1_FRAMES

        frame_len = engine.stage1_model.config.geometry.frame_len
        resume = read_tokens(args.stage1_tokens).reshape(-1, STAGE1_FRAMES, frame_len)
    try:
        videos = engine.generate(prompts, params, progress=progress, stage1_tokens_in=resume,
                                 profile_path=args.profile)
    finally:
        for bar in bars.values():
            bar.close()
        engine.close()
    out = Path(args.output)
    for i, video in enumerate(videos):
        stem = out if len(videos) == 1 else out.with_name(f"{out.stem}-{i:03d}{out.suffix}")
        frames = upscale_nearest(video.frames, 480) if args.upscale and video.sr_tokens is None else video.frames
        if args.format == "gif":
            path = write_gif(stem.with_suffix(".gif"), frames, video.fps)
        elif args.format == "mp4":
            path = write_mp4(stem.with_suffix(".mp4"), frames, video.fps)
        else:
            path = write_frames(stem.with_suffix(""), frames)
        tokens_path = write_tokens(stem.with_suffix(".tokens.pt"), video.tokens)
        if video.sr_tokens is not None:
            write_tokens(stem.with_suffix(".sr_tokens.pt"), video.sr_tokens)
        print(f"wrote {path} ({video.frames.shape[0]} frames, {video.fps:g} fps) and {tokens_path}")
        print(video.latency_report())
    if args.profile:
        print(f"profiler trace: {args.profile} (open in chrome://tracing or Perfetto)")
    return 0


def cmd_convert(args) -> int:
    from .io.checkpoints import convert

    t0 = time.perf_counter()
    dst = convert(args.src, args.dst, dtype=DTYPES[args.dtype] if args.dtype else None)
    print(f"wrote {dst} in {time.perf_counter() - t0:.1f} s")
    return 0


def _add_engine_args(g: argparse.ArgumentParser):
    g.add_argument("--model-root", help="folder with cogvideo-stage1/2, ice_text.model, ice_image.pt, "
                                        "cluster_label2.npy (default: the embedded random model)")
    g.add_argument("--dsr", metavar="DIR", help="the cogview2-dsr checkpoint (default: <model-root>/cogview2-dsr)")
    g.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    g.add_argument("--offload", action="store_true",
                   help="keep the models in CPU memory and move each to --device for its stage only")
    g.add_argument("--decoder-dtype", choices=sorted(DTYPES),
                   help="the VQ decoder's dtype (default: --dtype); bf16 halves CPU decoding of 480x480 frames")
    g.add_argument("--device", default="cpu")
    g.add_argument("--backend", default="auto")
    g.add_argument("--tensor-parallel", type=int, default=1, metavar="N",
                   help="split both stage models over N ranks: spawned processes, one GPU each on --device cuda "
                        "(NCCL), CPU processes otherwise (gloo); under torchrun, its processes (default 1)")


def _add_generate_args(g: argparse.ArgumentParser, default_profile: str | None = None):
    g.add_argument("prompt", nargs="?", help="the prompt (or --prompt-file)")
    g.add_argument("--prompt-file", help="one prompt per line")
    g.add_argument("--output", "-o", default="output/video.gif", help="output path (suffix set by --format)")
    g.add_argument("--format", choices=["gif", "mp4", "frames"], default="gif")
    g.add_argument("--seed", type=int, default=defaults.SEED)
    g.add_argument("--samples", type=int, default=1, help="videos per prompt")
    g.add_argument("--only-first-stage", action="store_true")
    g.add_argument("--stage1-tokens", help="resume stage 2 from a saved .tokens.pt / .npy of stage-1 frames")
    g.add_argument("--no-guidance-stage1", action="store_true", help="the original's --use-guidance-stage1 off")
    g.add_argument("--guidance-alpha", type=float, default=defaults.GUIDANCE_ALPHA)
    g.add_argument("--temperature", type=float, default=defaults.VIDEO_SAMPLING.temperature)
    g.add_argument("--top_k", type=int, default=defaults.VIDEO_SAMPLING.top_k, help="clusters")
    g.add_argument("--coglm-temperature2", type=float, default=defaults.VIDEO_SAMPLING.temperature2)
    g.add_argument("--max-inference-batch-size", type=int, default=defaults.MAX_BATCH)
    g.add_argument("--schedule", choices=SCHEDULES, default=defaults.SCHEDULE)
    g.add_argument("--super-resolution", action=argparse.BooleanOptionalAction, default=None,
                   help="480x480 frames through the cogview2-dsr model (default: on when --model-root holds "
                        "cogview2-dsr/ or --dsr is given; off for the embedded default model)")
    g.add_argument("--sr-max-batch", type=int, default=defaults.SR_MAX_BATCH,
                   help="frames per super-resolution step of the serving loop (each frame is its own forward)")
    g.add_argument("--upscale", action="store_true",
                   help="nearest-neighbour upscale of 160x160 output to 480x480 (without super-resolution)")
    _add_engine_args(g)
    g.add_argument("--quiet", action="store_true")
    g.add_argument("--profile", metavar="PATH", default=default_profile,
                   help="write a torch.profiler Chrome trace of the run to PATH")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cogvideo_engine", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("score", help="teacher-forced scoring of a clip (random tokens) on a checkpoint")
    s.add_argument("--model", help="SAT or converted checkpoint directory (default: the embedded default model)")
    s.add_argument("--stage", default="stage1", help="pass: stage1-first-frame, stage1 or stage2")
    s.add_argument("--frames", type=int, default=1, help="target frames to score (default 1)")
    s.add_argument("--batch", type=int, default=1)
    s.add_argument("--text-len", type=int, default=12)
    s.add_argument("--text-bias", type=float, default=defaults.TEXT_BIAS)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    s.add_argument("--device", default="cpu")
    s.add_argument("--backend", default="reference",
                   help="attention backend: reference, triton, auto (python -m cogvideo_engine.info lists them)")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.add_argument("--quiet", action="store_true", help="no progress output")
    s.set_defaults(func=cmd_score)
    g = sub.add_parser("generate", help="text to video: stage 1, stage 2, VQ decode, export")
    _add_generate_args(g)
    g.set_defaults(func=cmd_generate)
    pr = sub.add_parser("profile", help="generate with a torch.profiler Chrome trace (default output/trace.json)")
    _add_generate_args(pr, default_profile="output/trace.json")
    pr.set_defaults(func=cmd_generate)
    sv = sub.add_parser("serve", help="the HTTP service: OpenAI-style /v1/videos jobs, events, metrics, playground")
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--store", help="job-store folder (default: <engine home>/jobs, i.e. "
                                    "~/.cache/cogvideo_engine/jobs or $COGVIDEO_ENGINE_HOME/jobs)")
    sv.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1 (default: $COGVIDEO_API_KEY)")
    sv.add_argument("--allow-unauthenticated", action="store_true",
                    help="serve a non-loopback --host without an API key")
    sv.add_argument("--max-queued", type=int, default=64, help="unfinished jobs accepted (beyond: 429)")
    sv.add_argument("--retention-hours", type=float, default=24.0,
                    help="finished jobs are removed this long after they finish (0: kept forever)")
    sv.add_argument("--shutdown-timeout", type=float, default=30.0,
                    help="seconds a shutdown waits for running jobs; the rest resume at the next start")
    sv.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    _add_engine_args(sv)
    sv.set_defaults(func=cmd_serve)
    i = sub.add_parser("info", help="versions, devices and attention backends (and why one is missing)")
    i.set_defaults(func=lambda args: print(__import__("cogvideo_engine.info", fromlist=["report"]).report()) or 0)
    c = sub.add_parser("convert", help="convert a SAT checkpoint to config.json + model.safetensors")
    c.add_argument("src")
    c.add_argument("dst")
    c.add_argument("--dtype", choices=sorted(DTYPES), help="store in this dtype (default: as stored)")
    c.set_defaults(func=cmd_convert)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
