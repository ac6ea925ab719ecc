"""The named choices of stage 1 (strategies, readings of "weight decay 0.9999", BatchNorm modes).

Kept free of torch so the command line can build its parser, answer ``--help`` and reject a bad
argument at once; ``longtail.train`` and ``longtail.models`` give the names their meaning.
"""

from __future__ import annotations

# The study's "weight decay 0.9999" read four ways (ablated in RESULTS.md). 0.9999 is the
# value of ``decay_value`` in every reading.
DECAY_READINGS = {
    "cb-beta": "no weight decay; 0.9999 is the Class-Balanced beta of the class-balanced losses",
    "l2": "Adam(weight_decay=0.9999): literal L2 coupled into the gradient",
    "adamw": "AdamW(weight_decay=0.9999): decoupled decay, weights shrink by lr*0.9999 per step",
    "ema": "no weight decay; evaluate an exponential moving average of the weights, decay 0.9999",
}
DEFAULT_DECAY_READING = "cb-beta"

# End-to-end strategies: (loss, sampler).
STRATEGIES = {
    "baseline": ("ce", "instance"),
    "reweight": ("ce", "class-balanced"),  # the study's Reweight: WeightedRandomSampler
    "ldam-drw": ("ldam", "instance"),  # Cao et al. 2019, class-balanced weights after drw_start
}

# BatchNorm handling in stage 1:
# "frozen": BN layers always run in eval mode (running statistics fixed, affine parameters
#   still trained) -- measured best for folded checkpoints (RESULTS.md, "BatchNorm handling").
# "reestimate": first re-estimate BN statistics on training images, function-preservingly,
#   then train BN normally. "train": ordinary BN training (right for real BN statistics).
# "auto": "frozen" for folded checkpoints, "train" otherwise.
BN_MODES = ("auto", "frozen", "reestimate", "train")
