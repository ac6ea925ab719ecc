"""The presets of ``longtail reproduce`` and the stage-1 settings every run of a study shares."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from longtail.config.checks import check_choice, size_schedule_span
from longtail.config.train import TrainConfig
from longtail.errors import LongtailError


@dataclass(frozen=True)
class Preset:
    """Stage-1 settings of a preset; everything else is the study's (Adam, lr 1e-4, batch 128)."""

    image_size: int
    epochs: int
    reason: str
    lr_schedule: str = "constant"
    freeze_blocks: int = 0
    random_resized_crop: float = 0.0  # the smallest crop's share of the image (0: the pad-4 crop)
    # The input size of the stage-2 heads' features (``Stage2Config.feature_size``): auto, stage1 or pixels.
    feature_size: int | str = "auto"
    # A preset meant for a GPU: what it would take on 2 CPU cores. On a machine without CUDA it runs
    # only where --device cpu asks for it (``longtail.study``).
    cpu_estimate: str | None = None


PRESETS = {
    # The study's recipe: pretrained B0 at 224 px, 30 epochs, constant lr; the test size is the
    # training size unless validation says otherwise. About 25 min per epoch on 2 CPU cores, so it
    # is meant for a GPU.
    "seed": Preset(
        224,
        30,
        "the study's recipe: 224 px, 30 epochs (GPU)",
        cpu_estimate="two stage-1 runs of 30 epochs at 224 px: about 25 hours on 2 CPU cores",
    ),
    # The configuration whose whole study (baseline + Reweight stage-1 runs, features, all
    # stage-2 heads, evaluation) is meant to fit about an hour on the slower of our 2-core machines
    # with the best validation accuracy we measured: 128 px for 8 epochs with EfficientNet-B0's
    # first four blocks frozen at their ImageNet weights (--freeze-blocks 4: a named deviation from
    # the study's full fine-tuning, which buys the larger input for the same time), a cosine
    # learning rate (peak 1e-4; a named deviation: at a constant 1e-4 the final weights' accuracy
    # swings by 3-5 points from one epoch to the next), random-resized crops covering 65-100% of the
    # upsampled image instead of the pad-4 crop (a named deviation), tested at the size validation
    # picks; the stage-2 heads on features at that test size (their own three-size choice on 500
    # validation images bought nothing measurable and cost a sixth of the hour). Chosen by validation
    # accuracy among the candidates of RESULTS.md ("Round 2" for the size, depth and schedule; "Round
    # 3" for the crops, by the Modified CE head's validation accuracy at the stage-1 size).
    "cpu": Preset(
        128,
        8,
        "128 px, 8 epochs, B0's first 4 blocks frozen, cosine lr, random-resized crops of min scale 0.65 (named "
        "deviations), test size chosen on validation: about an hour on 2 CPU cores",
        lr_schedule="cosine",
        freeze_blocks=4,
        random_resized_crop=0.65,
        feature_size="stage1",
    ),
    # A first look in about five minutes: the whole long-tailed training set for one epoch at
    # 32 px, the test size chosen on validation. Chosen by measurement (RESULTS.md, "The smoke
    # preset"): 200 images in the head class taught nothing (10% top-1), 2,500 stayed under 30%.
    "smoke": Preset(32, 1, "the full long-tailed set, 1 epoch at 32 px: the study's pattern in ~5 minutes"),
}

# What `longtail reproduce` runs when --preset and --seeds are not given (``longtail.study.reproduce``'s
# defaults; tests/test_cli_options.py checks the two agree).
DEFAULT_PRESET = "cpu"
DEFAULT_SEEDS = (0,)


# The study-wide TrainConfig fields `longtail reproduce` overrides (the preset's, or the config's); it
# passes them into the study with the data options (``DATA_FIELDS``).
STUDY_FIELDS = (
    "epochs",
    "image_size",
    "size_schedule",
    "test_size",
    "lr_schedule",
    "tta",
    "decay_reading",
    "freeze_blocks",
    "weight_decay",
    "ema_decay",
    "mixup",
    "cutmix",
    "random_resized_crop",
    "device",
    "compile",
)


def gpu_job(preset: str) -> str | None:
    """What a preset meant for a GPU is and would take on a CPU (``longtail.runtime.device_of``
    refuses it on a machine without CUDA unless --device cpu asks for it); None for the others."""
    estimate = PRESETS[preset].cpu_estimate
    return None if estimate is None else f"--preset {preset} is meant for a GPU ({estimate})"


def study_config(preset: str, *, data, weights: str, imbalance: float | str, given: dict) -> TrainConfig:
    """The stage-1 settings shared by every run of a study: the preset's, with ``given`` (any
    ``TrainConfig`` field) overriding them. A --size-schedule given alone sets the epochs and the
    image size."""
    check_choice("preset", preset, PRESETS)
    chosen = PRESETS[preset]
    settings = {
        "image_size": chosen.image_size,
        "epochs": chosen.epochs,
        "lr_schedule": chosen.lr_schedule,
        "freeze_blocks": chosen.freeze_blocks,
        "random_resized_crop": chosen.random_resized_crop,
    }
    if given.get("size_schedule") is not None and not {"epochs", "image_size"} & given.keys():
        settings.update(size_schedule_span(given["size_schedule"]))
    unknown = sorted(set(given) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        raise LongtailError(f"unknown study settings {unknown}")
    config = TrainConfig(data=data, weights=weights, imbalance=imbalance, **{**settings, **given})
    config.validate()
    return config
