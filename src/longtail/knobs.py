"""The knobs of the stage-2 losses and methods, in one table: which loss or method has a
temperature tau, a focal gamma or a Class-Balanced beta, the fixed value of each, and the grids
they are tuned over on the validation split (torch-free).

The configuration reads it for which options a head uses (``config.stage2``), the tuning for the
settings a head is chosen among (``stage2.tuning``), the losses for the value a loss is built with
when it is given none (``losses``). The study gives each loss one setting, its fixed value; a
temperature not given is always tuned on validation, and ``--tune`` tunes the gamma and beta not
given (README, "Fixed settings and tuned ones").
"""

KNOBS = ("tau", "gamma", "beta")
# The knobs of each retrain loss (modified-ce is logit-adjusted CE). Balanced Softmax has none: it is
# logit-adjusted CE at tau = 1. ce, crt, inverse-frequency-ce and LDAM (s and the margin fixed at
# Cao et al.'s values) have none either.
LOSS_KNOBS = {
    "focal": ("gamma",),
    "class-balanced": ("beta",),
    "cb-focal": ("beta", "gamma"),
    "modified-ce": ("tau",),
    "logit-adjusted": ("tau",),
}
TAU_METHODS = ("tau-norm", "post-hoc-la")  # the methods with a temperature of their own
TUNABLE = ("gamma", "beta")  # the knobs --tune tunes (a temperature not given is always tuned)

# The fixed value of each knob: what a loss is built with when it is given none, and the setting
# a tuned knob's ties are broken towards. Gamma 1 and beta 0.9999 are the study's (beta: Cui et
# al.'s standard value; a head takes the stage-1 run's --decay-value instead under the cb-beta
# reading); at tau = 1 logit-adjusted CE is Balanced Softmax.
FIXED = {"tau": 1.0, "gamma": 1.0, "beta": 0.9999}

# Logit-adjusted loss: one head per value. Widened twice because a recorded run picked the top of
# the grid (RESULTS.md): 2.5 with a short stage 1, then 4.0 on one seed of a three-seed study.
TAU_GRID_TRAINED = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 6.0)
TAU_GRID_POST_HOC = tuple(round(0.1 * i, 1) for i in range(61))  # 0.0 .. 6.0, free to evaluate
# The grids of ``tune`` (``longtail decouple --tune``, the study's tuned variants). Gamma and beta
# alone have as many values as TAU_GRID_TRAINED (13), the tuning budget of Modified CE's tau:
# focal's gamma from 0 (plain CE) to 5, the Class-Balanced beta from 0.9 (weights within 0.5% of
# equal at CIFAR-10-LT's counts) to 0.99999 (within 3% of inverse frequency), log-spaced in 1 - beta.
# CB-focal's two knobs together take a 4 x 4 grid (16 heads, three more) around the study's (0.9999, 1).
GAMMA_GRID = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0)
BETA_GRID = (0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9995, 0.9998, 0.9999, 0.99995, 0.99998, 0.99999)
CB_FOCAL_GRID = tuple((beta, gamma) for beta in (0.99, 0.999, 0.9999, 0.99999) for gamma in (0.0, 0.5, 1.0, 2.0))
