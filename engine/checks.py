"""Argument checks shared by the public entry points: each raises before any compute, naming the argument and
the constraint (``TypeError`` for a wrong kind of value, ``ValueError`` for a value out of range)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from numbers import Integral, Real

import torch


def require_int(name: str, value, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an int (bools refused), within ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def require_real(name: str, value, *, positive: bool = False) -> float:
    """``value`` as a finite float (bools refused); with ``positive``, > 0."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return value


def require_bool(name: str, value, *, optional: bool = False) -> bool | None:
    """``value`` as a bool (``None`` too with ``optional``)."""
    if value is None and optional:
        return None
    if not isinstance(value, bool):
        kinds = "True, False or None" if optional else "True or False"
        raise TypeError(f"{name} must be {kinds}, got {type(value).__name__} {value!r}")
    return value


def require_choice(name: str, value, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def require_callable(name: str, value) -> None:
    if value is not None and not callable(value):
        raise TypeError(f"{name} must be callable or None, got {type(value).__name__}")


def require_token_tensor(name: str, value, *, ndim: int, upper: int, shape: tuple[int | None, ...] | None = None,
                         ) -> torch.Tensor:
    """An integer tensor of ``ndim`` dimensions (``shape``: the sizes it must have, None for any) with values
    in ``0..upper-1``."""
    if not isinstance(value, torch.Tensor) or value.dtype not in (torch.int64, torch.int32):
        kind = value.dtype if isinstance(value, torch.Tensor) else type(value).__name__
        raise TypeError(f"{name} must be an integer (int64 or int32) tensor, got {kind}")
    if value.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(value.shape)}")
    if shape is not None and any(want is not None and got != want for got, want in zip(value.shape, shape,
                                                                                         strict=True)):
        want = ", ".join("*" if s is None else str(s) for s in shape)
        raise ValueError(f"{name} must have shape [{want}], got {list(value.shape)}")
    if value.numel() and (int(value.min()) < 0 or int(value.max()) >= upper):
        raise ValueError(f"{name} holds ids outside 0..{upper - 1}")
    return value
