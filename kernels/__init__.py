"""Attention kernels of the CogVideo engine and the rules they implement.

``rules`` (tensor-free attention rules) and ``masks`` (dense masks built from them) are the source of truth;
``reference`` is the plain-PyTorch backend every other backend is tested against.
"""

from .rules import DEFAULT_BOI_ID, GIVEN, TARGET, TEXT, FrameGeometry, Pass, StreamLayout

__all__ = ["DEFAULT_BOI_ID", "GIVEN", "TARGET", "TEXT", "FrameGeometry", "Pass", "StreamLayout"]
