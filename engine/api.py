"""The public API: ``Engine`` (model assets in, videos out), ``SamplingParams``, ``VideoOutput``; the serving
front :class:`~cogvideo_engine.serving.async_engine.AsyncEngine` runs over an ``Engine``.

    engine = Engine.from_pretrained("/models/cogvideo")          # or Engine.default(): random tiny assets
    [video] = engine.generate("a cat plays the piano", SamplingParams(seed=1))
    video.frames   # uint8 [33, 480, 480, 3] with cogview2-dsr (else [33, 160, 160, 3])
    video.tokens   # [33, 400]   video.sr_tokens  # [33, 3600]   video.timings  # seconds per stage

No global state: an ``Engine`` holds its models, tokenizer, decoder and sampler; requests carry their seeds.

Tensor parallel: ``Engine.from_pretrained(root, tensor_parallel=N)`` (or ``Engine.default(tensor_parallel=N)``)
starts ``N - 1`` worker processes -- spawned, one per GPU on CUDA (NCCL), or CPU processes (gloo) -- each holding
1/N of both stage models; this process drives them and the outputs are the same ``VideoOutput`` s. A script
that makes such an engine at import level needs the ``if __name__ == "__main__":`` guard (a spawned process
imports the parent's main module). Under ``torchrun --nproc-per-node N`` every process calls the same
``from_pretrained``: rank 0 returns the engine, the others serve it and exit when it closes. ``engine.close()``
(or ``with Engine.from_pretrained(...) as engine:``) stops the workers.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import torch

from .checks import require_callable, require_int, require_token_tensor
from .generation.pipeline import STAGE1_FRAMES
from .generation.sampler import ClusterSampler
from .io.checkpoints import load_dsr_model, load_image_decoder, load_model, read_model_config
from .io.export import to_uint8
from .io.tokenizer import TextTokenizer
from .models.config import NUM_IMAGE_TOKENS
from .parallel.sharding import check_tensor_parallel
from .serving.core import EngineCore
from .serving.types import AdmissionError, Cancelled, Checkpoint, Event, QueueFull, SamplingParams, VideoOutput

_CORE_LOCK = threading.Lock()


class Engine:
    """CogVideo generation from text (see the module docstring)."""

    def __init__(self, stage1_model, stage2_model, tokenizer: TextTokenizer, decoder, sampler: ClusterSampler,
                 backend: str | None = None, dsr_model=None, super_resolution_default: bool | None = None,
                 offload_to: str | torch.device | None = None, tensor_parallel=None):
        """``offload_to``: the models stay where they are (the CPU) and each moves there for its own stage.
        ``tensor_parallel``: the :class:`~cogvideo_engine.parallel.group.TensorParallelGroup` the stage models
        are shards of (:meth:`from_pretrained` makes it)."""
        self.stage1_model, self.stage2_model, self.dsr_model = stage1_model, stage2_model, dsr_model
        self.tokenizer, self.decoder, self.sampler = tokenizer, decoder, sampler
        self.backend = backend
        self.offload_to = torch.device(offload_to) if offload_to is not None else None
        self.super_resolution_default = dsr_model is not None if super_resolution_default is None else \
            super_resolution_default
        self.tensor_parallel = tensor_parallel
        self._core: EngineCore | None = None

    @classmethod
    def from_pretrained(cls, root: str | Path | None = None, *, stage1: str | Path | None = None,
                        stage2: str | Path | None = None, text_model: str | Path | None = None,
                        image_decoder: str | Path | None = None, cluster_labels: str | Path | None = None,
                        dsr: str | Path | None = None, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32, backend: str | None = None,
                        super_resolution_default: bool | None = None,
                        decoder_dtype: torch.dtype | None = None, offload: bool = False,
                        tensor_parallel: int = 1) -> Engine:
        """Load the assets; ``root`` laid out like the released folder (``cogvideo-stage1/``,
        ``cogvideo-stage2/``, ``cogview2-dsr/``, ``ice_text.model``, ``ice_image.pt``, ``cluster_label2.npy``)
        fills what is not given explicitly. ``stage2`` may be missing for stage-1-only use, ``dsr`` (the
        super-resolution checkpoint) for 160x160 output. ``super_resolution_default``: whether requests
        super-resolve unless they say otherwise (default: when the DSR checkpoint is there). ``decoder_dtype``:
        the VQ decoder's dtype (default ``dtype``; bf16 halves the CPU decode time of a 480x480 frame).
        ``offload``: keep the stage-1, stage-2 and DSR models in CPU memory and move each to ``device`` only for
        its stage, as the original pipeline does (one 7.7 B model on the GPU at a time, ~15 GB in bf16, plus
        the runner's fused copies of the attention weights, instead of all three). ``tensor_parallel``: split
        both stage models over this many ranks (see the module docstring; one of 1, 2, 4, 8, 16 for the released
        model): on ``device="cuda"`` ranks use ``cuda:0..N-1`` (``CUDA_VISIBLE_DEVICES`` picks the GPUs), on the
        CPU they are processes sharing its cores; the DSR model and the image decoder stay whole in this
        process."""
        require_int("tensor_parallel", tensor_parallel, minimum=1)
        root = Path(root) if root is not None else None

        def pick(explicit, name):
            if explicit is not None:
                return Path(explicit)
            if root is None:
                raise ValueError(f"give {name!r} or a root folder holding it")
            return root / name

        stage2_path = pick(stage2, "cogvideo-stage2")
        dsr_path = Path(dsr) if dsr is not None else root / "cogview2-dsr" if root is not None else None
        if dsr is not None and not dsr_path.exists():
            raise FileNotFoundError(f"super-resolution checkpoint {dsr_path} does not exist")
        stage1_path = pick(stage1, "cogvideo-stage1")
        text_path, decoder_path = pick(text_model, "ice_text.model"), pick(image_decoder, "ice_image.pt")
        labels_path = pick(cluster_labels, "cluster_label2.npy")
        home = "cpu" if offload else device  # where the big models live between stages
        group = None
        if tensor_parallel != 1:
            group, (model1, model2) = _start_tensor_parallel(tensor_parallel, stage1_path, stage2_path, device,
                                                              dtype, offload)
        else:
            model1 = load_model(stage1_path, dtype, home, stage=1)
            model2 = load_model(stage2_path, dtype, home, stage=2) if stage2_path.exists() else None
        try:
            return cls(model1, model2, TextTokenizer(text_path),
                       load_image_decoder(decoder_path, decoder_dtype or dtype, device),
                       ClusterSampler.from_file(labels_path), backend,
                       load_dsr_model(dsr_path, dtype, home) if dsr_path is not None and dsr_path.exists() else None,
                       super_resolution_default, offload_to=device if offload else None, tensor_parallel=group)
        except BaseException:
            if group is not None:
                group.close()
            raise

    @classmethod
    def default(cls, **kwargs) -> Engine:
        """The embedded default assets: tiny, random weights, real geometry (built once on first use).

        Its tiny DSR model super-resolves only when a request asks (``SamplingParams(super_resolution=True)``):
        decoding 480x480 frames on a CPU takes seconds per frame."""
        from .io.default_assets import default_assets_root

        kwargs.setdefault("super_resolution_default", kwargs.get("dsr") is not None)
        return cls.from_pretrained(default_assets_root(), **kwargs)

    def close(self) -> None:
        """Stop the tensor-parallel workers (idempotent; a no-op for a one-process engine). The engine cannot
        generate afterwards."""
        if self.tensor_parallel is not None:
            self.tensor_parallel.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[F, 400]`` (or ``[F, 3600]``) tokens -> uint8 frames ``[F, 160, 160, 3]`` (``[F, 480, 480, 3]``),
        with per-frame min-max normalisation as the original saves them."""
        return to_uint8(self.decoder.decode(tokens))

    @property
    def core(self) -> EngineCore:
        """The loop that runs this engine's requests (made on first use; an :class:`AsyncEngine` made over this
        engine configures and drives the same one)."""
        with _CORE_LOCK:
            if self._core is None:
                self._core = EngineCore(self)
            return self._core

    def generate(self, prompts: str | list[str], params: SamplingParams | list[SamplingParams] | None = None, *,
                 stage1_tokens_in: torch.Tensor | None = None,
                 progress: Callable[[str, int, int], bool | None] | None = None,
                 cancel: Callable[[], bool] | None = None,
                 profile_path: str | Path | None = None) -> list[VideoOutput]:
        """Generate ``num_samples`` videos per prompt.

        params: one for all prompts or one per prompt. stage1_tokens_in: ``[S, 5, 400]`` saved stage-1 tokens
        to resume stage 2 from (one prompt, ``S = num_samples``). progress: ``progress(phase, done, total)`` after
        every forward step, ``done`` / ``total`` the tokens of the phase (``stage1``, ``stage2``,
        ``super_resolution``; frames for ``decode``) over all prompts and samples; returning False cancels.
        cancel: polled at every step; True cancels. Cancelling raises :class:`Cancelled` within one step.
        profile_path: write a torch.profiler Chrome trace of the whole call there (phases are NVTX ranges on
        CUDA).

        The prompts are requests of :attr:`core`, submitted together (they share forwards) and driven from this
        thread -- or by the :class:`AsyncEngine` loop running over this engine --, the one code path of every
        generation. Every argument and every request is checked against the engine's assets before any compute
        (prompt lengths in every pass, top-k against the clusters, the checkpoints a request needs): a bad
        request among several raises ``TypeError`` / ``ValueError`` before the first one starts.
        """
        prompts, per_prompt, resumes = self._check_request(prompts, params, stage1_tokens_in, progress, cancel,
                                                           profile_path)
        if profile_path is None:
            return self._run(prompts, per_prompt, resumes, progress, cancel)
        activities = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=activities) as prof:
            outputs = self._run(prompts, per_prompt, resumes, progress, cancel)
        Path(profile_path).parent.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(profile_path))
        return outputs

    def _run(self, prompts, per_prompt, resumes, progress, cancel) -> list[VideoOutput]:
        """Submit the checked requests to the core together and drive it until each has finished."""
        core = self.core
        finals: dict[str, Event] = {}
        done_tokens: dict[str, dict[str, int]] = {}
        stopped: list[Cancelled] = []

        def on_event(ev: Event):
            if ev.is_terminal:
                finals[ev.request_id] = ev
            elif ev.kind == "progress" and not stopped:
                done_tokens.setdefault(ev.phase, {})[ev.request_id] = ev.done
                done = sum(done_tokens[ev.phase].values())
                total = sum(r.phase_total(ev.phase) for r in requests)
                stop = cancel is not None and cancel()
                if stop or (progress is not None and progress(ev.phase, done, total) is False):
                    stopped.append(Cancelled(f"cancelled during {ev.phase} at {done}/{total} tokens"))
                    for r in requests:
                        core.abort(r.id, str(stopped[0]))

        requests = []
        try:
            for prompt, p, resume in zip(prompts, per_prompt, resumes, strict=True):
                requests.append(core.submit(prompt, p, emit=on_event, resume=resume, checked=True))
            core.drive(lambda: all(r.id in finals for r in requests))
        except BaseException:
            for r in requests:
                core.abort(r.id, "the generate call was interrupted")
            raise
        if stopped:
            raise stopped[0]
        outputs = []
        for r in requests:
            ev = finals[r.id]
            if ev.kind != "completed":
                for other in requests:
                    core.abort(other.id)
                raise ev.error
            outputs += ev.outputs
        return outputs

    def _check_request(self, prompts, params, resume, progress, cancel, profile_path):
        """``(prompts, one SamplingParams per prompt, one resume state per prompt)`` after checking every argument
        of :meth:`generate` (each request by :meth:`EngineCore.check`)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        elif isinstance(prompts, (list, tuple)):
            prompts = list(prompts)
        else:
            raise TypeError(f"prompts must be a string or a list of strings, got {type(prompts).__name__}")
        if not prompts:
            raise ValueError("no prompts given")
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str) or not prompt.strip():
                raise ValueError(f"prompt {i} must be a non-empty string, got {prompt!r}")
        params = SamplingParams() if params is None else params
        per_prompt = list(params) if isinstance(params, (list, tuple)) else [params] * len(prompts)
        if len(per_prompt) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(per_prompt)} SamplingParams")
        for p in per_prompt:
            if not isinstance(p, SamplingParams):
                raise TypeError(f"params must be SamplingParams (or a list of them), got {type(p).__name__}")
        require_callable("progress", progress)
        require_callable("cancel", cancel)
        if profile_path is not None and not isinstance(profile_path, (str, Path)):
            raise TypeError(f"profile_path must be a str or Path, got {type(profile_path).__name__}")
        if resume is not None:
            if len(prompts) != 1:
                raise ValueError("stage1_tokens_in resumes one prompt")
            frame_len = self.stage1_model.config.geometry.frame_len
            require_token_tensor("stage1_tokens_in", resume, ndim=3, upper=NUM_IMAGE_TOKENS,
                                 shape=(per_prompt[0].num_samples, STAGE1_FRAMES, frame_len))
        resumes = [self.core.check(prompt, p, resume) for prompt, p in zip(prompts, per_prompt, strict=True)]
        return prompts, per_prompt, resumes


def _start_tensor_parallel(world: int, stage1: Path, stage2: Path, device, dtype: torch.dtype, offload: bool):
    """The ranks of a tensor-parallel engine and this process's shards ``(stage 1, stage 2 or None)``: spawned
    workers, or under ``torchrun`` the job's processes (ranks > 0 serve the driver and exit in here)."""
    from .parallel import group as tp

    config, _ = read_model_config(stage1, stage=1)
    check_tensor_parallel(config, world)
    if stage2.exists():
        check_tensor_parallel(read_model_config(stage2, stage=2)[0], world)
    if offload:
        raise ValueError("offload moves whole models between stages; tensor_parallel keeps each rank's shard "
                         "resident (use one or the other)")
    device = torch.device(device)
    if device.type not in ("cpu", "cuda") or device.index not in (None, 0):
        raise ValueError(f"tensor_parallel runs on 'cpu' or 'cuda' (ranks on cuda:0..N-1; CUDA_VISIBLE_DEVICES "
                         f"picks the GPUs), not {str(device)!r}")
    sources = tp.source_paths(stage1, stage2 if stage2.exists() else None)
    start = tp.join_torchrun if "WORLD_SIZE" in os.environ and "RANK" in os.environ else tp.launch
    group, models = start(world, device.type, sources, dtype)
    return group, (models["stage1"], models.get("stage2"))


__all__ = ["AdmissionError", "Cancelled", "Checkpoint", "Engine", "Event", "QueueFull", "SamplingParams",
           "VideoOutput"]
