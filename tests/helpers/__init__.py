"""What several test modules share (test modules never import each other; they import from here).

``models``: small CogVideo and DSR models in the small geometries every rule case fits in; ``numerics``: the
float64-relative comparison rule of every numerical test; ``kernel_cases`` / ``local_cases``: the rule cases
and input builders of the window- and local-attention kernels; ``golden``: reading the original code's golden
logits and checking the engine against them.
"""
