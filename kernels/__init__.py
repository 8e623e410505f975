"""Attention kernels of the CogVideo engine and the rules they implement.

Modules, bottom to top (each imports only modules listed above it; nothing here imports the engine):

* ``rules`` (tensor-free attention rules) and ``masks`` (dense masks built from them) are the source of truth;
  ``layout`` holds the cache layout and :class:`~.layout.AttentionRule`, the static part of one launch;
  ``local_rules`` the super-resolution model's local windows.
* ``reference`` is the plain-PyTorch window-attention backend every other backend is tested against, and
  holds ``check_window_inputs``, the input checks every window backend runs first; ``local_reference`` is the
  same for the local attention (``check_local_inputs``).
* ``launch`` holds what every kernel launch shares: the output allocation (``attention_output``; the ops' fakes
  return the same strides) and the device guard.
* ``triton_common`` holds what the Triton kernels share: the guarded ``triton`` import, ``triton_status``,
  interpreter detection and the bf16 work-around it needs, the launch check, and the jit helpers of the online
  softmax. ``triton_attention`` (window attention) and ``triton_local_attention`` (super-resolution local
  attention) are the kernels; ``csrc_ops`` wraps the C++/CUDA kernels of ``cogvideo_engine._C``. All three
  expose plain functions with their reference's contract, and check backend-specific limits themselves.
* ``ops`` registers every ``torch.library`` op (``cogvideo_engine::window_attention_triton``,
  ``window_attention_csrc``, ``local_attention_triton``, ``local_attention_csrc``) from those functions.
* ``registry`` names the backends, says which can run where and why, and hands out the reference functions or
  the registered ops.
* ``batch_invariant`` wraps the C++ batch-invariant fp32 linear (``linear_rows``: a row's outputs bit-identical
  whatever the batch; fp32 or bf16 weight) and its float64 twin; the engine's decode steps use it on CPU.
* ``decode_stack`` binds a model's fp32 tensors to the C++ decode stack (a whole CPU decode step -- every layer
  and the logits head -- in one call; the runner's Python forward is its twin).
"""

from .rules import DEFAULT_BOI_ID, GIVEN, TARGET, TEXT, FrameGeometry, Pass, StreamLayout

__all__ = ["DEFAULT_BOI_ID", "GIVEN", "TARGET", "TEXT", "FrameGeometry", "Pass", "StreamLayout"]
