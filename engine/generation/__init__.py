"""Generation at token level: ``settings`` (what a run is asked to do; the shipped defaults, once), ``sampler``
(the cluster sampler, keyed randomness), ``scheduler`` (the rule-derived wavefront), ``runner`` (fused weights,
static cache, CUDA graphs), ``passes`` (one pass: prefill + scheduled decode), ``pipeline`` (stage 1, stage 2),
``super_resolution``, ``scoring`` (teacher-forced logits).
"""
