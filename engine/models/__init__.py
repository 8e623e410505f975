"""The models, plain PyTorch: ``config`` (shapes of the CogVideo stage models and the DSR model), ``layers``
(the CogView2 pieces they share), ``cogvideo`` (the reference CogVideo model and its KV cache), ``dsr`` (the
super-resolution model), ``vq_decoder`` (icetk's image decoder), ``random_init`` (deterministic random weights).
"""
