"""The settings of a stage-2 head (``Stage2Config``): which options each method and loss uses (its
knobs: ``longtail.knobs``), their defaults, their validation, and what is left to the validation split."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from longtail.choices import COSINE_HEAD_LOSSES, SAMPLERS, STAGE2_LOSSES, STAGE2_METHODS
from longtail.config.checks import (
    FEATURE_SIZE_MODES,
    MAX_IMAGE_SIZE,
    MAX_SEED,
    MIN_IMAGE_SIZE,
    check_choice,
    check_float,
    check_int,
    option_name,
)
from longtail.errors import LongtailError
from longtail.knobs import FIXED, KNOBS, LOSS_KNOBS, TAU_METHODS, TUNABLE

# The methods that train something (a new head, or LWS's scales) and the options only they use.
TRAINING_METHODS = ("retrain", "lws")
TRAINING_OPTIONS = ("sampler", "epochs", "batch_size", "lr", "views", "seed")
# What each knob is, in the message on a knob given to a head without it.
_KNOB_ROLES = {
    "tau": "not given: tuned on validation",
    "gamma": "their focusing parameter",
    "beta": "their Class-Balanced beta",
}


def _losses_with(knob: str) -> str:
    """The losses that have ``knob``, for a message: "focal and cb-focal"."""
    return " and ".join(loss for loss, knobs in LOSS_KNOBS.items() if knob in knobs)


def _knob_users(knob: str) -> str:
    """What has ``knob``, for a message: "--loss focal and cb-focal (their focusing parameter)"."""
    methods = f" and --method {' and '.join(TAU_METHODS)}" if knob == "tau" else ""
    return f"--loss {_losses_with(knob)}{methods} ({_KNOB_ROLES[knob]})"


@dataclass
class Stage2Config:
    """One stage-2 head. An option left None is one not given: ``resolved()`` fills in the default of
    what uses it (``DEFAULTS``) and leaves None what the method or loss does not use, and
    ``validate()`` refuses an option given that nothing uses.

    Head-training defaults: Adam lr 1e-3, batch 128, 30 epochs (the stage-1 batch size and epoch
    count; the lr is ten times stage 1's 1e-4, for a freshly initialised linear layer on fixed
    features; it is not tuned, and is the same for every loss and every tuned variant); the
    study's fixed focal gamma 1. A temperature ``tau`` not given
    is tuned on the validation split; ``tune`` tunes the loss's gamma and beta there too (those not
    given), each over a grid of its own (``longtail.knobs``)."""

    method: str = "retrain"
    loss: str | None = None  # --method retrain only: ce when not given
    sampler: str | None = None  # None: class-balanced for crt and lws, instance otherwise
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    views: int | None = None  # augmented copies of the train features (0: the plain images only)
    # MaxNorm: after every step each class's weight row is scaled back to an L2 norm of at most this
    # (Alshammari et al., CVPR 2022); --method retrain with a linear head only; None: unbounded.
    max_norm: float | None = None
    tau: float | None = None  # None: tuned on validation where the method or loss has a tau
    gamma: float | None = None  # None: 1.0 (the study's), or tuned with ``tune``
    beta: float | None = None  # None: the stage-1 run's --decay-value under the cb-beta reading, else 0.9999
    tune: bool = False  # tune the loss's gamma and beta that are not given on validation
    seed: int | None = None
    feature_size: int | str | None = None  # None: auto (FEATURE_SIZE_MODES)

    DEFAULTS: ClassVar[dict] = {"loss": "ce", "epochs": 30, "batch_size": 128, "lr": 1e-3, "views": 0,
                                "gamma": FIXED["gamma"], "seed": 0, "feature_size": "auto"}  # fmt: skip

    def validate(self) -> None:
        """Check every value, then that every option given is used by the method and loss."""
        check_choice("method", self.method, STAGE2_METHODS)
        if self.loss is not None:
            check_choice("loss", self.loss, STAGE2_LOSSES)
        if self.sampler is not None:
            check_choice("sampler", self.sampler, SAMPLERS)
        for name, low, high in (("epochs", 1, None), ("batch_size", 1, None), ("views", 0, 64), ("seed", 0, MAX_SEED)):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), low, high)
        if self.lr is not None:
            check_float("lr", self.lr, 0.0, low_open=True)
        if self.tau is not None:
            check_float("tau", self.tau, 0.0, 100.0)
        if self.gamma is not None:
            check_float("gamma", self.gamma, 0.0, 100.0)
        if self.beta is not None:
            check_float("beta", self.beta, 0.0, 1.0, high_open=True)
        if self.max_norm is not None:
            check_float("max_norm", self.max_norm, 0.0, low_open=True)
        if self.feature_size is not None and self.feature_size not in FEATURE_SIZE_MODES:
            check_int("feature_size", self.feature_size, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)
        if not isinstance(self.tune, bool):
            raise LongtailError(f"--tune is a switch (True or False), got {self.tune!r}")
        unused = self._unused()
        if unused:
            raise LongtailError("; ".join(unused))

    def _what(self) -> str:
        return f"--loss {self.resolved_loss}" if self.method == "retrain" else f"--method {self.method}"

    def _unused(self) -> list[str]:
        """One sentence per option given that the method or loss does not use."""
        unused = []
        if self.method != "retrain" and self.loss is not None:
            unused.append(
                f"--loss {self.loss} is not used by --method {self.method}, which trains no new classifier"
                + (" (it fits per-class scales with cross-entropy)" if self.method == "lws" else "")
                + ": --loss is for --method retrain"
            )
        if self.method not in TRAINING_METHODS:
            for name in TRAINING_OPTIONS:
                if getattr(self, name) is not None:
                    unused.append(
                        f"{option_name(name)} {getattr(self, name)} is not used by --method {self.method}, which "
                        f"trains nothing: {option_name(name)} is for --method retrain and lws"
                    )
        if self.max_norm is not None and (self.method != "retrain" or self.resolved_loss in COSINE_HEAD_LOSSES):
            user = (
                f"--loss {self.resolved_loss}, whose cosine head normalises its weights"
                if self.method == "retrain"
                else f"--method {self.method}, which trains no classifier's weights"
            )
            unused.append(
                f"--max-norm {self.max_norm:g} is not used by {user}: --max-norm is for --method retrain "
                "with a linear head"
            )
        knobs = self.knobs
        for name in KNOBS:
            if getattr(self, name) is not None and name not in knobs:
                value = getattr(self, name)
                unused.append(f"--{name} {value:g} is not used by {self._what()}: --{name} is for {_knob_users(name)}")
        if self.tune:
            tunable = [knob for knob in knobs if knob in TUNABLE]
            if not tunable:
                why = {
                    "balanced-softmax": "balanced-softmax has no knob (it is logit-adjusted CE at tau = 1)",
                    "modified-ce": "its tau is tuned on validation whenever --tau is not given",
                    "logit-adjusted": "its tau is tuned on validation whenever --tau is not given",
                }.get(self.resolved_loss if self.method == "retrain" else None, "it has no gamma or beta")
                unused.append(
                    f"--tune is not used by {self._what()}: {why}; --tune tunes the gamma of --loss "
                    f"{_losses_with('gamma')} and the beta of --loss {_losses_with('beta')}"
                )
            elif all(getattr(self, knob) is not None for knob in tunable):
                given = " and ".join(f"--{knob}" for knob in tunable)
                unused.append(f"--tune leaves nothing to tune: {given} fix every knob of {self._what()}; leave one out")
        return unused

    @property
    def trains(self) -> bool:
        """Whether the method trains anything (and so uses the sampler, epochs, lr, views and seed)."""
        return self.method in TRAINING_METHODS

    @property
    def resolved_loss(self) -> str | None:
        """The loss of a retrain head (ce when not given); None for the other methods."""
        if self.method != "retrain":
            return None
        return self.loss if self.loss is not None else self.DEFAULTS["loss"]

    @property
    def knobs(self) -> tuple[str, ...]:
        """The hyperparameters (tau, gamma, beta) the method and loss have."""
        if self.method == "retrain":
            return LOSS_KNOBS.get(self.resolved_loss, ())
        return ("tau",) if self.method in TAU_METHODS else ()

    @property
    def tuned_knobs(self) -> tuple[str, ...]:
        """The knobs chosen on the validation split: a tau not given, and with ``tune`` the gamma
        and beta not given."""
        return tuple(
            knob
            for knob in self.knobs
            if getattr(self, knob) is None and (knob == "tau" or (self.tune and knob in TUNABLE))
        )

    @property
    def resolved_sampler(self) -> str | None:
        if not self.trains:
            return None
        if self.sampler is not None:
            return self.sampler
        return "class-balanced" if self.loss == "crt" or self.method == "lws" else "instance"

    def resolved(self) -> Stage2Config:
        """What the head uses: the defaults of options not given filled in, None for every option
        the method and loss do not use (and for a knob tuned on validation, or a beta left to the
        stage-1 run). ``run.json`` records this; a study compares recorded heads in this form."""
        knobs, trains = self.knobs, self.trains

        def training(name):
            value = getattr(self, name)
            return (value if value is not None else self.DEFAULTS[name]) if trains else None

        gamma = None
        if "gamma" in knobs and "gamma" not in self.tuned_knobs:
            gamma = self.gamma if self.gamma is not None else self.DEFAULTS["gamma"]
        return Stage2Config(
            method=self.method,
            loss=self.resolved_loss,
            sampler=self.resolved_sampler,
            epochs=training("epochs"),
            batch_size=training("batch_size"),
            lr=training("lr"),
            views=training("views"),
            max_norm=self.max_norm if self.method == "retrain" else None,
            tau=self.tau if "tau" in knobs else None,
            gamma=gamma,
            beta=self.beta if "beta" in knobs else None,
            tune=bool(self.tune) and any(knob in TUNABLE for knob in self.tuned_knobs),
            seed=training("seed"),
            feature_size=self.feature_size if self.feature_size is not None else self.DEFAULTS["feature_size"],
        )

    @property
    def chosen_on_validation(self) -> tuple[str, ...]:
        """The options the validation split decides: the tuned knobs, and the feature size under
        ``--feature-size auto`` (the default)."""
        auto = (self.feature_size if self.feature_size is not None else self.DEFAULTS["feature_size"]) == "auto"
        return self.tuned_knobs + (("feature_size",) if auto else ())


def validation_choices(names: tuple[str, ...]) -> tuple[str, str]:
    """``(what, options)`` of the settings a head leaves to the validation split
    (``Stage2Config.chosen_on_validation``), for a message: "tau and the feature size", and the
    options that would fix them, "--tau and --feature-size stage1"."""
    what = " and ".join("the feature size" if name == "feature_size" else name for name in names)
    options = " and ".join("--feature-size stage1" if name == "feature_size" else f"--{name}" for name in names)
    return what, options
