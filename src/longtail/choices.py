"""Every named choice of longtail: strategies, readings of "weight decay 0.9999", BatchNorm modes,
long-tail profiles, frequency groupings, samplers, losses, stage-2 methods, schedules, TTA modes
and devices.

The one definition of each name set. Kept free of torch so the command line can build its parser
(argparse ``choices``), answer ``--help`` and reject a bad argument at once. The modules that give
the names their meaning (``longtail.strategies``, ``longtail.models``, ``longtail.losses``,
``longtail.samplers``, ``longtail.metrics``, ...) import them from here or key their registries by
them; tests/test_cli_options.py checks that every registry and the command line agree with them.
"""

from __future__ import annotations

# CIFAR-10's classes in its label order: the names of a 10-class source that has none (a torchvision
# CIFAR-10 root, an .npz without class_names), and the data the study's own numbers are about.
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

# The study's "weight decay 0.9999" read four ways (ablated in RESULTS.md). 0.9999 is the
# value of ``decay_value`` in every reading.
DECAY_READINGS = {
    "cb-beta": "no weight decay; 0.9999 is the Class-Balanced beta of the class-balanced losses",
    "l2": "Adam(weight_decay=0.9999): literal L2 coupled into the gradient",
    "adamw": "AdamW(weight_decay=0.9999): decoupled decay, weights shrink by lr*0.9999 per step",
    "ema": "no weight decay; evaluate an exponential moving average of the weights, decay 0.9999",
}
DEFAULT_DECAY_READING = "cb-beta"

# End-to-end strategies (``longtail.strategies`` gives each its loss and sampler).
STRATEGIES = {
    "baseline": "cross-entropy, every image once per epoch (the study's baseline)",
    "reweight": "cross-entropy, classes drawn with equal probability (the study's Reweight: WeightedRandomSampler)",
    "ldam-drw": "LDAM loss with deferred class-balanced re-weighting (Cao et al. 2019)",
    "logit-adjusted": "logit-adjusted cross-entropy, tau = 1, every image once per epoch (Menon et al. 2021)",
}

# BatchNorm handling in stage 1:
# "frozen": BN layers always run in eval mode (running statistics fixed, affine parameters
#   still trained) -- measured best for folded checkpoints (RESULTS.md, "BatchNorm handling").
# "reestimate": first re-estimate BN statistics on training images, function-preservingly,
#   then train BN normally. "train": ordinary BN training (right for real BN statistics).
# "auto": "frozen" for folded checkpoints, "train" otherwise.
BN_MODES = ("auto", "frozen", "reestimate", "train")

# Long-tail profiles of the training subset (``longtail.data.long_tail_counts``).
PROFILES = ("exp", "step")

# ``--imbalance natural``: every image of each class kept as the source has it (no subsampling).
NATURAL_IMBALANCE = "natural"

# Many/medium/few frequency groups of the metrics (``longtail.metrics.frequency_groups``):
# "thirds" ranks the classes by training count (top 30 % many, bottom 30 % few: CIFAR-10-LT's
# classes 0-2, 3-6, 7-9); "shots" uses the training-shot thresholds of the CIFAR-100-LT and
# ImageNet-LT literature (many > 100, medium 20-100, few < 20 images).
GROUPINGS = ("thirds", "shots")

# Epoch orders (``longtail.samplers``).
SAMPLERS = ("instance", "class-balanced")

# Losses by name (``longtail.losses.LOSSES`` builds them), and what stage 2 accepts besides:
# "modified-ce" (the study's undefined loss, see ``longtail.losses.MODIFIED_CE``) and "crt"
# (cross-entropy with class-balanced sampling, Kang et al.).
LOSS_NAMES = (
    "ce",
    "balanced-softmax",
    "focal",
    "class-balanced",
    "cb-focal",
    "logit-adjusted",
    "inverse-frequency-ce",
    "ldam",
)
STAGE2_LOSSES = (*LOSS_NAMES, "modified-ce", "crt")
# The losses on cosine logits (LDAM): trained on a cosine classifier, whose head normalises its
# weights, so a bound on the weights' norms (--max-norm) means nothing to them.
COSINE_HEAD_LOSSES = ("ldam",)
STAGE2_METHODS = ("retrain", "tau-norm", "lws", "post-hoc-la")

# Learning-rate schedules of stage 1. "constant" is the study's (Adam at lr throughout);
# "cosine" is a named deviation: linear warm-up over the first epoch, then half a cosine to 0.
LR_SCHEDULES = ("constant", "cosine")

# Test-time augmentation: "flip" averages the logits of each image and its mirror, reported
# beside (never instead of) the plain numbers.
TTA_MODES = ("none", "flip")

# Where stage 1 runs: "auto" is CUDA when available, else the CPU.
DEVICES = ("auto", "cpu", "cuda")
