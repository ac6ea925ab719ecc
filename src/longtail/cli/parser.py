"""The parser of ``longtail``: its description, its commands and the options that are each
command's own (those several commands share are ``longtail.cli.options``'s).

Every error of the parser is one line that names the command's --help.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from longtail.choices import DECAY_READINGS, LR_SCHEDULES, SAMPLERS, STAGE2_LOSSES, STAGE2_METHODS, TTA_MODES
from longtail.cli.options import (
    add_data_options,
    add_deviation_options,
    add_device_options,
    add_target_prior_option,
    add_test_priors_option,
    add_train_options,
    add_weights_option,
    shown_value,
    stated_default,
)
from longtail.config import (
    DEFAULT_PRESET,
    DEFAULT_SEEDS,
    DEFAULT_TOP_K,
    MAX_FREEZE_BLOCKS,
    PRESETS,
    Stage2Config,
    TrainConfig,
    parse_feature_size,
    parse_test_size,
)
from longtail.errors import LongtailError
from longtail.knobs import BETA_GRID, CB_FOCAL_GRID, FIXED, GAMMA_GRID, TAU_GRID_TRAINED

DESCRIPTION = (
    "Long-tailed image classification with EfficientNet-B0 (CIFAR-10-LT, or your own images): see how a data "
    "set splits into a long tail, train a network on it end to end, fit new classifiers on its frozen features, "
    "run the whole study with a report, and classify new images with a finished run."
)


class _Parser(argparse.ArgumentParser):
    """argparse, but errors are one line and name the command's --help."""

    def error(self, message: str):
        raise LongtailError(f"{message} (see `{self.prog} --help`)")


def _command(commands, name: str, summary: str) -> argparse.ArgumentParser:
    """A subcommand whose one-line summary is both its line in `longtail --help` and the start of its own --help."""
    return commands.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + ".")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="longtail", description=DESCRIPTION)
    commands = parser.add_subparsers(
        title="commands",
        dest="command",
        required=True,
        parser_class=_Parser,
        metavar="COMMAND",
        help="`longtail COMMAND --help` lists its options and their defaults",
    )

    data = _command(
        commands, "data", "print the per-class counts of the training, validation and test splits, and the imbalance"
    )
    add_data_options(data)

    train = _command(commands, "train", "stage 1: train EfficientNet-B0 end to end, then evaluate it")
    add_data_options(train)
    add_train_options(train)
    add_test_priors_option(train)
    train.add_argument("--out", type=Path, required=True, help="run directory (required)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    train.add_argument("--overwrite", action="store_true", help="replace what --out holds")

    decouple = _command(commands, "decouple", "stage 2: a new classifier on a frozen stage-1 backbone")
    decouple.add_argument("run", type=Path, metavar="RUN", help="a finished `longtail train` run (stage 1)")
    decouple.add_argument("--out", type=Path, required=True, help="run directory of this stage-2 head (required)")
    decouple.add_argument(
        "--method",
        choices=STAGE2_METHODS,
        metavar="METHOD",
        help="retrain (a new linear head trained with --loss and --sampler), tau-norm (the stage-1 classifier's "
        "weights divided by their norm to the power tau), lws (learnable weight scaling), post-hoc-la (post-hoc "
        f"logit adjustment of the stage-1 classifier) ({stated_default(Stage2Config, 'method')})",
    )
    decouple.add_argument(
        "--loss",
        choices=STAGE2_LOSSES,
        metavar="LOSS",
        help="loss of --method retrain: %(choices)s; modified-ce is the study's Modified CE (logit-adjusted CE, tau "
        f"tuned), crt is CE with class-balanced sampling ({stated_default(Stage2Config, 'loss')})",
    )
    decouple.add_argument(
        "--sampler",
        choices=SAMPLERS,
        metavar="SAMPLER",
        help="%(choices)s (default: class-balanced for crt and lws, instance otherwise)",
    )
    decouple.add_argument("--epochs", type=int, help=f"epochs of the head ({stated_default(Stage2Config, 'epochs')})")
    decouple.add_argument(
        "--batch-size", type=int, help=f"features per step ({stated_default(Stage2Config, 'batch_size')})"
    )
    decouple.add_argument("--lr", type=float, help=f"Adam's learning rate ({stated_default(Stage2Config, 'lr')})")
    decouple.add_argument(
        "--views",
        type=int,
        help=f"augmented copies of the cached train features ({stated_default(Stage2Config, 'views')}: the plain "
        "images only)",
    )
    decouple.add_argument(
        "--max-norm",
        type=float,
        help="MaxNorm: after every step, scale each class's weight row back to at most this L2 norm (--method "
        "retrain with a linear head; default: unbounded)",
    )
    decouple.add_argument("--tau", type=float, help="temperature (default: tuned on the validation split)")
    decouple.add_argument(
        "--gamma",
        type=float,
        help=f"focal gamma of focal and cb-focal ({stated_default(Stage2Config, 'gamma')}, or tuned with --tune)",
    )
    decouple.add_argument(
        "--beta",
        type=float,
        help="class-balanced beta (default: the stage-1 run's --decay-value under the cb-beta reading, else "
        f"{shown_value(FIXED['beta'])}; or tuned with --tune)",
    )
    decouple.add_argument(
        "--feature-size",
        type=parse_feature_size,
        help="input size of the head's features: auto (the stage-1 test size and one 16-px step either side, the "
        "best on the head's own validation accuracy), stage1 (the stage-1 test size) or a number of pixels "
        f"({stated_default(Stage2Config, 'feature_size')})",
    )
    decouple.add_argument(
        "--tune",
        action="store_true",
        default=None,
        help="choose the loss's gamma (focal, cb-focal) and beta (class-balanced, cb-focal) that are not given on "
        f"the validation split: gamma over {len(GAMMA_GRID)} values, beta over {len(BETA_GRID)}, cb-focal's two "
        f"together over {len(CB_FOCAL_GRID)} pairs (modified-ce's tau grid has {len(TAU_GRID_TRAINED)} values) "
        "(default off: the study's fixed gamma 1 and beta)",
    )
    decouple.add_argument(
        "--seed",
        type=int,
        help=f"seed of the head's initialisation and sampling ({stated_default(Stage2Config, 'seed')})",
    )
    add_target_prior_option(decouple, "the head")
    add_test_priors_option(decouple)
    decouple.add_argument("--overwrite", action="store_true", help="replace what --out holds")
    decouple.add_argument(
        "--cache-dir",
        type=Path,
        help="where the stage-1 run's data and features are cached (default: $LONGTAIL_CACHE or ~/.cache/longtail)",
    )

    reproduce = _command(commands, "reproduce", "the whole study in one command, with a report")
    reproduce.add_argument(
        "--preset",
        choices=tuple(PRESETS),
        default=DEFAULT_PRESET,
        metavar="PRESET",
        help="; ".join(f"{name}: {preset.reason}" for name, preset in PRESETS.items()) + f" (default {DEFAULT_PRESET})",
    )
    add_data_options(reproduce, seed=False)
    reproduce.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=list(DEFAULT_SEEDS),
        help="the seeds of the study's runs, each a run of every strategy (default "
        + " ".join(map(str, DEFAULT_SEEDS))
        + ")",
    )
    reproduce.add_argument("--extras", action="store_true", help="add the strategies beyond the study")
    add_weights_option(reproduce)
    reproduce.add_argument(
        "--decay-reading",
        choices=tuple(DECAY_READINGS),
        metavar="READING",
        help="the reading of 'weight decay 0.9999': %(choices)s, as for train "
        f"({stated_default(TrainConfig, 'decay_reading')})",
    )
    reproduce.add_argument("--epochs", type=int, help="stage-1 epochs (default: the preset's)")
    reproduce.add_argument("--image-size", type=int, help="stage-1 training size (default: the preset's)")
    reproduce.add_argument(
        "--size-schedule", help="progressive resizing, SIZE:EPOCHS,... as for train (default: the preset's)"
    )
    reproduce.add_argument(
        "--test-size", type=parse_test_size, help="auto, train or a number of pixels (default: the preset's)"
    )
    reproduce.add_argument(
        "--lr-schedule",
        choices=LR_SCHEDULES,
        metavar="SCHEDULE",
        help="%(choices)s (default: the preset's)",
    )
    reproduce.add_argument(
        "--tta",
        choices=TTA_MODES,
        metavar="MODE",
        help=f"%(choices)s: flip adds rows of its own, beside the study's ({stated_default(TrainConfig, 'tta')})",
    )
    reproduce.add_argument(
        "--freeze-blocks",
        type=int,
        help=f"B0's features[0:K] kept fixed, 0-{MAX_FREEZE_BLOCKS} (default: the preset's)",
    )
    add_deviation_options(reproduce, "default: the preset's")
    reproduce.add_argument(
        "--feature-size",
        type=parse_feature_size,
        help="input size of the stage-2 heads' features, as `longtail decouple --feature-size`: auto, stage1 or a "
        "number of pixels (default: the preset's: "
        + ", ".join(f"{name} {preset.feature_size}" for name, preset in PRESETS.items())
        + ")",
    )
    add_device_options(reproduce)
    add_test_priors_option(reproduce)
    reproduce.add_argument(
        "--out", type=Path, required=True, help="the study's directory: its runs, results.md and report.html (required)"
    )
    reproduce.add_argument(
        "--overwrite", action="store_true", help="retrain every run under --out (whatever settings they had)"
    )

    evaluate = _command(commands, "evaluate", "recompute a finished run's metrics: RUN/metrics.json and RUN/figures/")
    evaluate.add_argument(
        "run", type=Path, metavar="RUN", help="a finished `longtail train` or `longtail decouple` run"
    )
    evaluate.add_argument(
        "--cache-dir",
        type=Path,
        help="where the run's data is cached (default: $LONGTAIL_CACHE or ~/.cache/longtail)",
    )
    add_test_priors_option(evaluate)

    predict = _command(
        commands, "predict", "classify image files or folders with a finished run (or a stage-2 head fitted on it)"
    )
    predict.add_argument("run", type=Path, metavar="RUN", help="a finished `longtail train` run (stage 1)")
    predict.add_argument("paths", type=Path, nargs="+", metavar="PATH", help="image files, or folders of them")
    predict.add_argument(
        "--head", type=Path, help="a `longtail decouple` run fitted on RUN: classify with its head (default: RUN's own)"
    )
    predict.add_argument(
        "--out",
        type=Path,
        help="write the predictions to this .csv or .json file (default: CSV on stdout)",
    )
    predict.add_argument(
        "--top-k", type=int, help=f"classes listed per image (default {DEFAULT_TOP_K}, or all if fewer)"
    )
    add_target_prior_option(predict, "the classifier (the run's, or --head's)")
    predict.add_argument(
        "--cache-dir",
        type=Path,
        help="where the run's data is cached when --target-prior reads it (default: $LONGTAIL_CACHE or "
        "~/.cache/longtail)",
    )
    return parser
