"""Model shapes: the hyperparameters a checkpoint fixes, for the CogVideo stage models and the DSR model, plus
presets for the released models and small ones for tests."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from cogvideo_engine.kernels.local_rules import DSR_GEOMETRY, LocalGeometry
from cogvideo_engine.kernels.rules import FrameGeometry

NUM_IMAGE_TOKENS = 20000
"""Image tokens are ids ``0..19999``; logits cover exactly these (tied to ``word_embeddings[:20000]``)."""

MODEL_CLASSES = ("CogVideoModel", "CogVideoCacheModel")
"""``model_class`` values written by the CogVideo training and inference code."""


class BackboneShape:
    """What the CogView2 backbone's shape fields imply; shared by :class:`ModelConfig` and the DSR config.

    Needs ``hidden_size``, ``num_attention_heads``, ``vocab_size`` and ``inner_hidden_size``.
    """

    def check_backbone(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by "
                             f"num_attention_heads {self.num_attention_heads}")
        if self.vocab_size < NUM_IMAGE_TOKENS:
            raise ValueError(f"vocab_size {self.vocab_size} is smaller than the {NUM_IMAGE_TOKENS} image tokens")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def ffn_hidden_size(self) -> int:
        return self.inner_hidden_size or 4 * self.hidden_size


@dataclass(frozen=True)
class ModelConfig(BackboneShape):
    """Shape of one CogVideo stage model (SPEC.md §1.4).

    ``stage`` is the checkpoint's ``cogvideo_stage`` (1 or 2): which passes the weights were trained for.
    The attention rule of a call comes from its pass, not from here.
    """

    num_layers: int = 48
    hidden_size: int = 3072
    num_attention_heads: int = 48
    vocab_size: int = 150010
    max_sequence_length: int = 1024
    additional_seqlen: int = 2000
    inner_hidden_size: int | None = None
    stage: int = 1
    layernorm_epsilon: float = 1e-5
    geometry: FrameGeometry = field(default_factory=FrameGeometry)
    stage1_windowed: bool = False
    """The paper's stage-1 design (3-D Swin temporal windows); the released stage-1 checkpoint is full causal."""

    def __post_init__(self):
        self.check_backbone()
        if self.stage not in (1, 2):
            raise ValueError(f"cogvideo_stage must be 1 or 2, got {self.stage!r}")
        g = self.geometry
        if self.max_sequence_length < g.extra_table_start:
            raise ValueError(f"the base position table ({self.max_sequence_length} rows) must cover ids below "
                             f"{g.extra_table_start}")
        needed = g.frame_len * (g.max_slots - 1)
        if self.additional_seqlen < needed:
            raise ValueError(f"the extra position table ({self.additional_seqlen} rows) must cover {needed} ids")

    def num_parameters(self) -> int:
        h, f, n = self.hidden_size, self.ffn_hidden_size, self.num_layers
        base_layer = 4 * 2 * h + (3 * h * h + 3 * h) + (h * h + h) + (f * h + f) + (h * f + h)
        mixin_layer = (3 * h * h + 3 * h) + (h * h + h) + h
        tables = (self.vocab_size + self.max_sequence_length + self.additional_seqlen) * h + 2 * h
        return n * (base_layer + mixin_layer) + tables

    # -- SwissArmyTransformer model_config.json --------------------------------------------------------

    @classmethod
    def from_sat_json(cls, cfg: dict[str, Any]) -> ModelConfig:
        """Build from a SwissArmyTransformer ``model_config.json`` (its keys override the defaults)."""
        layout = cfg.get("layout", [64, 464, 2064])
        if isinstance(layout, str):
            layout = [int(x) for x in layout.split(",")]
        frame_len = layout[1] - layout[0]
        grid = round(frame_len ** 0.5)
        if grid * grid != frame_len or (layout[2] - layout[0]) % frame_len:
            raise ValueError(f"layout {layout} does not describe square frames of equal size")
        geometry = FrameGeometry(grid=grid, max_slots=(layout[2] - layout[0]) // frame_len,
                                 **cfg.get("engine_geometry", {}))
        head_dim = cfg.get("hidden_size_per_attention_head")
        hidden = cfg.get("hidden_size", 3072)
        heads = cfg.get("num_attention_heads", 48)
        if head_dim is not None and head_dim * heads != hidden:
            raise ValueError(f"hidden_size_per_attention_head {head_dim} x {heads} heads != hidden_size {hidden}")
        order = cfg.get("layernorm_order", "sandwich")
        if order != "sandwich":
            raise ValueError(f"layernorm_order {order!r} is not a CogVideo model (CogVideo uses 'sandwich')")
        return cls(num_layers=cfg.get("num_layers", 48), hidden_size=hidden, num_attention_heads=heads,
                   vocab_size=cfg.get("vocab_size", 150010),
                   max_sequence_length=cfg.get("max_sequence_length", 1024),
                   additional_seqlen=cfg.get("additional_seqlen", 2000),
                   inner_hidden_size=cfg.get("inner_hidden_size"), stage=cfg.get("cogvideo_stage", 1),
                   geometry=geometry, stage1_windowed=bool(cfg.get("engine_stage1_windowed", False)))

    def check_pass(self, pass_):
        """The :class:`Pass` named by ``pass_``, if this checkpoint's stage runs it (else ``ValueError``)."""
        from cogvideo_engine.kernels.rules import Pass

        pass_ = Pass.parse(pass_)
        if pass_.model_stage != self.stage:
            raise ValueError(f"pass {pass_.value!r} runs on the stage-{pass_.model_stage} model, but this is the "
                             f"stage-{self.stage} checkpoint")
        return pass_

    def layout(self, pass_, text_len: int, num_targets: int):
        """The :class:`StreamLayout` of one stream of ``pass_`` on this model."""
        from cogvideo_engine.kernels.rules import Pass, StreamLayout

        pass_ = Pass.parse(pass_)
        return StreamLayout(pass_, text_len, num_targets, self.geometry,
                            stage1_windowed=self.stage1_windowed and pass_ is Pass.STAGE1)

    def to_sat_json(self) -> dict[str, Any]:
        """The ``model_config.json`` SwissArmyTransformer writes for this model."""
        g = self.geometry
        cfg = {
            "model_class": "CogVideoModel", "num_layers": self.num_layers, "hidden_size": self.hidden_size,
            "num_attention_heads": self.num_attention_heads, "vocab_size": self.vocab_size,
            "hidden_dropout": 0.1, "attention_dropout": 0.1, "layernorm_order": "sandwich",
            "model_parallel_size": 1, "max_sequence_length": self.max_sequence_length,
            "layout": [64, 64 + g.frame_len, 64 + g.frame_len * g.max_slots],
            "window_size": -1 if self.stage == 1 else g.window, "additional_seqlen": self.additional_seqlen,
            "cogvideo_stage": self.stage,
        }
        if self.inner_hidden_size is not None:
            cfg["inner_hidden_size"] = self.inner_hidden_size
        if self.stage1_windowed:
            cfg["engine_stage1_windowed"] = True
        extra = {k: v for k, v in dataclasses.asdict(g).items()
                 if k not in ("grid", "max_slots") and getattr(FrameGeometry(), k) != v}
        if extra:  # only small test models change these; SAT ignores unknown keys
            cfg["engine_geometry"] = {k: list(v) if isinstance(v, tuple) else v for k, v in extra.items()}
        return cfg

    # -- the engine's own config.json (converted checkpoints) -------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["geometry"]["stage2_temporal_order"] = list(self.geometry.stage2_temporal_order)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        d = dict(d)
        geometry = dict(d.pop("geometry", {}))
        if "num_slots" in geometry:  # the name converted checkpoints of engine 0.1 wrote
            geometry["max_slots"] = geometry.pop("num_slots")
        if "stage2_temporal_order" in geometry:
            geometry["stage2_temporal_order"] = tuple(geometry["stage2_temporal_order"])
        return cls(geometry=FrameGeometry(**geometry), **d)


def stage1_config() -> ModelConfig:
    """The released stage-1 model: 48 layers x 3072, 48 heads, vocab 150010, 1024 + 2000 positions."""
    return ModelConfig(stage=1)


def stage2_config() -> ModelConfig:
    """The released stage-2 (interpolation) model; same backbone as stage 1."""
    return ModelConfig(stage=2)


def tiny_config(stage: int = 1, *, num_layers: int = 2, hidden_size: int = 64, num_attention_heads: int = 4,
                vocab_size: int = 150010, geometry: FrameGeometry | None = None) -> ModelConfig:
    """A small model in the real geometry (by default), for tests and the embedded default model."""
    g = geometry or FrameGeometry()
    return ModelConfig(num_layers=num_layers, hidden_size=hidden_size, num_attention_heads=num_attention_heads,
                       vocab_size=vocab_size, stage=stage, geometry=g,
                       max_sequence_length=max(1024, g.extra_table_start),
                       additional_seqlen=max(2000, g.frame_len * (g.max_slots - 1)))


# -- the super-resolution (DSR) model --------------------------------------------------------------------

LOW_POSITION_START = 513
"""Position id of the first low-resolution token (the CogView2 image block starts at 512 + BOI)."""
DSR_MODEL_CLASS = "DsrModel"


@dataclass(frozen=True)
class DsrConfig(BackboneShape):
    """Shape of a DSR model; the released ``cogview2-dsr`` is built from the CogVideo backbone arguments."""

    num_layers: int = 48
    hidden_size: int = 3072
    num_attention_heads: int = 48
    vocab_size: int = 150010
    max_sequence_length: int = 1024
    inner_hidden_size: int | None = None
    layernorm_epsilon: float = 1e-5
    text_len: int = 96
    """Text positions of the original layout ``[96, 496, 4096]``: prompts may use ``text_len - 1`` tokens."""
    local: LocalGeometry = field(default_factory=lambda: DSR_GEOMETRY)

    def __post_init__(self):
        self.check_backbone()
        if self.max_sequence_length < LOW_POSITION_START + self.local.num_low:
            raise ValueError(f"the base position table ({self.max_sequence_length} rows) must cover the "
                             f"low-resolution ids {LOW_POSITION_START}..{LOW_POSITION_START + self.local.num_low - 1}")

    @property
    def additional_seqlen(self) -> int:
        """Rows of the extra position table: one per high-resolution cell (3600)."""
        return self.local.num_queries

    def check_prompt_len(self, num_tokens: int) -> None:
        """``ValueError`` unless a prompt of ``num_tokens`` fits the text positions (1..``text_len - 1``; the
        original asserts at least one pad)."""
        if num_tokens < 1:
            raise ValueError("super-resolution needs a non-empty prompt for every frame")
        if num_tokens >= self.text_len:
            raise ValueError(f"prompt of {num_tokens} tokens is too long for super-resolution: the model's "
                             f"layout holds at most {self.text_len - 1}")

    def num_parameters(self) -> int:
        h, f, n = self.hidden_size, self.ffn_hidden_size, self.num_layers
        layer = 4 * 2 * h + 2 * (3 * h * h + 3 * h) + 2 * (h * h + h) + (f * h + f) + (h * f + h)
        return n * layer + (self.vocab_size + self.max_sequence_length + self.additional_seqlen) * h + 2 * h

    @classmethod
    def from_sat_json(cls, raw: dict[str, Any]) -> DsrConfig:
        """Backbone keys of a ``model_config.json``; the engine's own small test models add
        ``engine_local_geometry`` and ``engine_text_len``."""
        head_dim, hidden = raw.get("hidden_size_per_attention_head"), raw.get("hidden_size", 3072)
        heads = raw.get("num_attention_heads", 48)
        if head_dim is not None and head_dim * heads != hidden:
            raise ValueError(f"hidden_size_per_attention_head {head_dim} x {heads} heads != hidden_size {hidden}")
        return cls(num_layers=raw.get("num_layers", 48), hidden_size=hidden, num_attention_heads=heads,
                   vocab_size=raw.get("vocab_size", 150010), max_sequence_length=raw.get("max_sequence_length", 1024),
                   inner_hidden_size=raw.get("inner_hidden_size"), text_len=raw.get("engine_text_len", 96),
                   local=LocalGeometry(**raw.get("engine_local_geometry", {})))

    def to_sat_json(self) -> dict[str, Any]:
        low = self.local.num_low
        cfg: dict[str, Any] = {
            "model_class": DSR_MODEL_CLASS, "num_layers": self.num_layers, "hidden_size": self.hidden_size,
            "num_attention_heads": self.num_attention_heads, "vocab_size": self.vocab_size,
            "layernorm_order": "sandwich", "model_parallel_size": 1,
            "max_sequence_length": self.max_sequence_length,
            "layout": [self.text_len, self.text_len + low, self.text_len + low + self.local.num_queries],
            "kernel_size": (self.local.window_rows + 1) // 2, "kernel_size2": self.local.low_window,
            "new_sequence_length": self.max_sequence_length + self.local.num_queries,
        }
        if self.inner_hidden_size is not None:
            cfg["inner_hidden_size"] = self.inner_hidden_size
        if self.local != DSR_GEOMETRY:
            cfg["engine_local_geometry"] = {k: getattr(self.local, k) for k in
                                            ("grid", "low_grid", "window_rows", "window_cols", "low_window")}
        if self.text_len != 96:
            cfg["engine_text_len"] = self.text_len
        return cfg


def tiny_dsr_config(*, num_layers: int = 2, hidden_size: int = 64, num_attention_heads: int = 4,
                    local: LocalGeometry = DSR_GEOMETRY, vocab_size: int = 150010) -> DsrConfig:
    """A small DSR model in the real geometry (by default), for tests and the embedded default model."""
    return DsrConfig(num_layers=num_layers, hidden_size=hidden_size, num_attention_heads=num_attention_heads,
                     vocab_size=vocab_size, local=local)
