"""The settings of a stage-1 run (``TrainConfig``) and of a stage-2 head (``Stage2Config``), and
their validation.

Torch-free, like ``longtail.choices``: the command line checks every value before it imports
torch or touches a run directory, so a bad value answers at once with one line that names the
option. The dataclasses are what ``run.json`` records (``dataclasses.asdict``) and what a study
or a resume compares (``config_differences``; ``training_differences`` leaves out where a session runs).

- ``longtail.config.checks``: integers, numbers and choices within bounds, the command line's sizes,
  size schedules, ``--imbalance`` and ``longtail predict``'s options;
- ``longtail.config.records``: a config read back from ``run.json``, and how a record and a request differ;
- ``longtail.config.train``: ``TrainConfig``, the data options' fields;
- ``longtail.config.stage2``: ``Stage2Config``, which options each method and loss uses (its knobs: ``longtail.knobs``);
- ``longtail.config.presets``: the presets of ``longtail reproduce``, the study's fields, ``study_config``.

The public names of all five are importable from ``longtail.config`` itself.
"""

from longtail.config.checks import (
    DEFAULT_TOP_K,
    FEATURE_SIZE_MODES,
    MAX_IMAGE_SIZE,
    MAX_SEED,
    MIN_IMAGE_SIZE,
    PREDICTION_FORMATS,
    TEST_SIZE_MODES,
    check_choice,
    check_float,
    check_int,
    check_prediction_options,
    option_name,
    parse_feature_size,
    parse_imbalance,
    parse_size_schedule,
    parse_test_size,
    size_schedule_span,
)
from longtail.config.presets import (
    DEFAULT_PRESET,
    DEFAULT_SEEDS,
    PRESETS,
    STUDY_FIELDS,
    Preset,
    gpu_job,
    study_config,
)
from longtail.config.records import config_differences, describe_differences, from_record
from longtail.config.stage2 import (
    TRAINING_METHODS,
    TRAINING_OPTIONS,
    Stage2Config,
    validation_choices,
)
from longtail.config.train import (
    DATA_FIELDS,
    LIST_OPTIONS,
    MAX_FREEZE_BLOCKS,
    MAX_STORE_SIZE,
    MIN_STORE_SIZE,
    SESSION_FIELDS,
    TrainConfig,
    training_differences,
)

__all__ = [
    "DATA_FIELDS",
    "DEFAULT_PRESET",
    "DEFAULT_SEEDS",
    "DEFAULT_TOP_K",
    "FEATURE_SIZE_MODES",
    "LIST_OPTIONS",
    "MAX_FREEZE_BLOCKS",
    "MAX_IMAGE_SIZE",
    "MAX_SEED",
    "MAX_STORE_SIZE",
    "MIN_IMAGE_SIZE",
    "MIN_STORE_SIZE",
    "PREDICTION_FORMATS",
    "PRESETS",
    "SESSION_FIELDS",
    "STUDY_FIELDS",
    "TEST_SIZE_MODES",
    "TRAINING_METHODS",
    "TRAINING_OPTIONS",
    "Preset",
    "Stage2Config",
    "TrainConfig",
    "check_choice",
    "check_float",
    "check_int",
    "check_prediction_options",
    "config_differences",
    "describe_differences",
    "from_record",
    "gpu_job",
    "option_name",
    "parse_feature_size",
    "parse_imbalance",
    "parse_size_schedule",
    "parse_test_size",
    "size_schedule_span",
    "study_config",
    "training_differences",
    "validation_choices",
]
