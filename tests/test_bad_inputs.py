"""Every input, systematically: every file longtail reads, damaged four ways, and every command-line
option given a bad value, must end with exit status 2, one line on stderr starting
``longtail: error:`` that names the file or the option, no traceback, and nothing changed on disk.

File inputs: the data ``.npz``, an image folder, a ``.tar.gz``, a weights file, the split's index
file, a run's ``checkpoint.pt``, ``run.json`` and ``model.pt``, each as an empty file, a truncated
file, random bytes and a valid file of the wrong kind. The feature cache (``features-<S>px.pt``) is a
cache: a damaged one is rebuilt, never trusted (the library-level cases are in test_features.py; here through the CLI).

Everything runs in this process through ``longtail.cli.main`` (what ``python -m longtail`` calls),
on a tiny synthetic dataset and a randomly initialised network, so the whole module takes seconds
per case. The finished runs the cases damage are copies of one made once per module.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import shutil
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from longtail import cli
from longtail.data import load_arrays, long_tail_split
from longtail.features import FEATURE_FILES, feature_file
from longtail.runs import RUN_FILE, read_json

DAMAGES = ("empty", "truncated", "random-bytes", "wrong-kind")


# ---------------------------------------------------------------- running the command line


def _call(argv: list[str]) -> tuple[int, str, str]:
    """``longtail ARGV`` in this process: (exit status, stdout, stderr); a traceback is kept in stderr."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            status = cli.main(argv)
        except SystemExit as exit_:  # argparse's --help; errors do not exit this way
            status = exit_.code
        except BaseException as error:  # noqa: BLE001 -- a crash is what these tests look for
            import traceback

            traceback.print_exception(error)
            status = 1
    return status, stdout.getvalue(), stderr.getvalue()


def _digest(*roots: Path) -> dict[str, str]:
    """sha256 of every file (and the names of the folders) under the roots; the lock files, which
    every attempt reopens, aside."""
    found = {}
    for root in roots:
        if root.is_file():
            found[str(root)] = hashlib.sha256(root.read_bytes()).hexdigest()
            continue
        for path in sorted(root.rglob("*")) if root.exists() else []:
            if path.name == ".lock":
                continue
            found[str(path)] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def _assert_refused(argv: list[str], names: list[str], watched: list[Path]) -> str:
    """``longtail ARGV`` exits 2 with one error line naming every one of ``names``, and the
    watched paths are unchanged. Returns the line."""
    before = _digest(*watched)
    status, stdout, stderr = _call(argv)
    assert "Traceback" not in stderr, stderr
    assert status == 2, stderr
    lines = [line for line in stderr.replace("\r", "\n").splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("longtail: error: "), lines[0]
    for name in names:
        assert name in lines[0], (name, lines[0])
    assert stdout == ""
    assert _digest(*watched) == before, "the command changed files on disk"
    return lines[0]


# ---------------------------------------------------------------- inputs


def _tiny_arrays() -> dict:
    rng = np.random.default_rng(0)
    return {
        "x_train": rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8),
        "y_train": np.repeat(np.arange(4), 10),
        "x_test": rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8),
        "y_test": np.repeat(np.arange(4), 2),
    }


def _data_args(data: Path, cache: Path) -> list[str]:
    return ["--data", str(data), "--imbalance", "2", "--val-per-class", "2", "--cache-dir", str(cache)]


def _train_argv(data: Path, cache: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train", *_data_args(data, cache), "--weights", "none", "--image-size", "32", "--test-size", "train",
        "--epochs", "1", "--batch-size", "8", "--out", str(out), *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict:
    """A tiny .npz, its cache, and a finished stage-1 run on it (randomly initialised B0)."""
    root = tmp_path_factory.mktemp("bad-inputs")
    npz = root / "tiny.npz"
    np.savez(npz, **_tiny_arrays())
    cache = root / "cache"
    run = root / "stage1"
    torch.manual_seed(0)
    status, _, stderr = _call(_train_argv(npz, cache, run))
    assert status == 0, stderr
    return {"root": root, "npz": npz, "cache": cache, "run": run}


def _damage(path: Path, damage: str, wrong_kind: bytes) -> None:
    """Replace the file at ``path`` with a damaged version of itself."""
    payload = path.read_bytes() if path.exists() else b""
    replacement = {
        "empty": b"",
        "truncated": payload[: max(1, len(payload) // 2)],
        "random-bytes": np.random.default_rng(7).bytes(max(64, min(len(payload), 4096))),
        "wrong-kind": wrong_kind,
    }[damage]
    path.write_bytes(replacement)


def _torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _npz_bytes(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("train/cat/0.png", _png_bytes())
    return buffer.getvalue()


# ---------------------------------------------------------------- every file input, four ways


@pytest.mark.parametrize("damage", DAMAGES)
def test_data_npz(workspace, tmp_path, damage):
    data = tmp_path / "data.npz"
    _damage(data, damage, _npz_bytes(images=np.zeros((2, 32, 32, 3), np.uint8)))  # no x_train/y_train/...
    cache = tmp_path / "cache"
    _assert_refused(["data", *_data_args(data, cache)], [str(data)], [tmp_path])


def _image_folder(root: Path) -> Path:
    for split in ("train", "test"):
        for label in range(2):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True)
            for index in range(4):
                (folder / f"{index}.png").write_bytes(_png_bytes())
    return root


@pytest.mark.parametrize("damage", DAMAGES)
def test_image_folder(tmp_path, damage):
    root = _image_folder(tmp_path / "images")
    bad = root / "train" / "class1" / "2.png"
    _damage(bad, damage, _npz_bytes(x=np.zeros(3)))  # an .npz named .png
    _assert_refused(["data", *_data_args(root, tmp_path / "cache")], [str(bad)], [tmp_path])


@pytest.mark.parametrize("damage", DAMAGES)
def test_tarball(tmp_path, damage):
    root = _image_folder(tmp_path / "images")
    tarball = tmp_path / "images.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        archive.add(root, arcname="images")
    shutil.rmtree(root)
    _damage(tarball, damage, _zip_bytes())  # a zip archive named .tar.gz
    _assert_refused(["data", *_data_args(tarball, tmp_path / "cache")], [str(tarball)], [tmp_path])


@pytest.mark.parametrize("damage", DAMAGES)
def test_weights_file(workspace, tmp_path, damage):
    from torchvision.models import resnet18

    weights = tmp_path / "weights.pth"
    _damage(weights, damage, _torch_bytes(resnet18().state_dict()))
    out = tmp_path / "run"
    argv = _train_argv(workspace["npz"], tmp_path / "cache", out, "--weights", str(weights))
    _assert_refused(argv, [str(weights)], [tmp_path])
    assert not out.exists()


@pytest.mark.parametrize("damage", DAMAGES)
def test_index_file(workspace, tmp_path, damage):
    cache = tmp_path / "cache"
    split = long_tail_split(load_arrays(workspace["npz"], cache), 2, "exp", 0, 2, cache_dir=cache)
    record = json.loads(split.index_file.read_text())
    _damage(split.index_file, damage, json.dumps({**record, "train": record["val"]}).encode())  # stale checksum
    _assert_refused(["data", *_data_args(workspace["npz"], cache)], [str(split.index_file)], [tmp_path])


def _copy_run(workspace: dict, tmp_path: Path) -> Path:
    run = tmp_path / "stage1"
    shutil.copytree(workspace["run"], run)
    return run


@pytest.mark.parametrize("damage", DAMAGES)
def test_checkpoint_of_a_run_to_resume(workspace, tmp_path, damage):
    run = _copy_run(workspace, tmp_path)
    record = json.loads((run / "run.json").read_text())
    record["status"] = "running"  # an unfinished run, as a killed one leaves it
    (run / "run.json").write_text(json.dumps(record))
    checkpoint = run / "checkpoint.pt"
    _damage(checkpoint, damage, _torch_bytes({"weights": torch.zeros(3)}))
    argv = _train_argv(workspace["npz"], workspace["cache"], run, "--epochs", "2", "--resume")
    _assert_refused(argv, [str(checkpoint)], [run])


@pytest.mark.parametrize("command", ["decouple", "evaluate", "resume"])
@pytest.mark.parametrize("damage", DAMAGES)
def test_run_json(workspace, tmp_path, damage, command):
    run = _copy_run(workspace, tmp_path)
    record = run / "run.json"
    _damage(record, damage, json.dumps({"kind": "decouple", "status": "finished"}).encode())
    argv = {
        "decouple": ["decouple", str(run), "--out", str(tmp_path / "head"), "--cache-dir", str(workspace["cache"])],
        "evaluate": ["evaluate", str(run), "--cache-dir", str(workspace["cache"])],
        "resume": _train_argv(workspace["npz"], workspace["cache"], run, "--resume"),
    }[command]
    _assert_refused(argv, [str(run)], [tmp_path])


@pytest.mark.parametrize("command", ["decouple", "evaluate"])
@pytest.mark.parametrize("damage", DAMAGES)
def test_model_pt(workspace, tmp_path, damage, command):
    from torchvision.models import resnet18

    run = _copy_run(workspace, tmp_path)
    for cached in run.glob(FEATURE_FILES):  # so stage 2 must read model.pt
        cached.unlink()
    model = run / "model.pt"
    _damage(model, damage, _torch_bytes(resnet18().state_dict()))
    argv = {
        "decouple": ["decouple", str(run), "--out", str(tmp_path / "head"), "--cache-dir", str(workspace["cache"])],
        "evaluate": ["evaluate", str(run), "--cache-dir", str(workspace["cache"])],
    }[command]
    _assert_refused(argv, [str(model)], [tmp_path])


@pytest.mark.parametrize("damage", DAMAGES)
def test_features_cache_is_rebuilt_not_trusted(workspace, tmp_path, damage):
    run = _copy_run(workspace, tmp_path)
    features = run / feature_file(read_json(run / RUN_FILE)["test_image_size"])
    good = torch.load(features, weights_only=True)
    _damage(features, damage, _torch_bytes({**good, "test": good["test"] + 1}))  # edited numbers, stale checksum
    head = tmp_path / "head"
    status, _, stderr = _call(["decouple", str(run), "--out", str(head), "--cache-dir", str(workspace["cache"])])
    assert status == 0, stderr
    rebuilt = torch.load(features, weights_only=True)
    torch.testing.assert_close(rebuilt["test"], good["test"], atol=0, rtol=0)
    metrics = json.loads((head / "metrics.json").read_text())
    assert sum(metrics["per_class"]["support"]) == 8


# ---------------------------------------------------------------- every option, bad values

NOT_A_NUMBER = "abc"
DATA_OPTIONS = {
    "--imbalance": ["0.5", "-1", "0", "nan", "inf", NOT_A_NUMBER],
    "--profile": ["zigzag"],
    "--max-per-class": ["0", "-3", "99999", NOT_A_NUMBER],
    "--val-per-class": ["-1", "10", NOT_A_NUMBER],
    "--seed": ["-1", str(2**40), NOT_A_NUMBER],
}
TRAIN_OPTIONS = {
    **DATA_OPTIONS,
    "--image-size": ["16", "0", "-1", "5000", NOT_A_NUMBER],
    "--epochs": ["0", "-2", NOT_A_NUMBER],
    "--size-schedule": ["48", "48:0", "x:y", "16:2", "48:2,64:0"],
    "--test-size": ["16", "0", "-1", NOT_A_NUMBER],
    "--tta": ["mirror"],
    "--batch-size": ["0", "-1", NOT_A_NUMBER],
    "--lr": ["0", "-1", "nan", "inf", NOT_A_NUMBER],
    "--lr-schedule": ["linear"],
    "--decay-reading": ["l3"],
    "--decay-value": ["1", "-0.1", "nan", NOT_A_NUMBER],
    "--bn": ["magic"],
    "--strategy": ["focal-magic"],
    "--device": ["tpu"],
}
DECOUPLE_OPTIONS = {
    "--method": ["re-rank"],
    "--loss": ["hinge-ish"],
    "--sampler": ["sqrt"],
    "--epochs": ["0", "-1", NOT_A_NUMBER],
    "--batch-size": ["0", NOT_A_NUMBER],
    "--lr": ["0", "-1", "nan", "inf", NOT_A_NUMBER],
    "--views": ["-1", "1000", NOT_A_NUMBER],
    "--tau": ["-1", "nan", "inf", NOT_A_NUMBER],
    "--gamma": ["-1", "nan", NOT_A_NUMBER],
    "--beta": ["1", "-0.1", "nan", NOT_A_NUMBER],
    "--seed": ["-1", NOT_A_NUMBER],
}
REPRODUCE_OPTIONS = {
    "--preset": ["huge"],
    "--imbalance": ["0.5", "nan", NOT_A_NUMBER],
    "--seeds": ["-1", NOT_A_NUMBER],
    "--epochs": ["0", NOT_A_NUMBER],
    "--image-size": ["16", NOT_A_NUMBER],
    "--size-schedule": ["48:0"],
    "--test-size": ["8", NOT_A_NUMBER],
    "--lr-schedule": ["step"],
    "--tta": ["five-crop"],
    "--decay-reading": ["l3"],
}


def _cases(options: dict) -> list:
    return [
        pytest.param(option, value, id=f"{option}={value}") for option, values in options.items() for value in values
    ]


@pytest.mark.parametrize(("option", "value"), _cases(DATA_OPTIONS))
def test_data_option(workspace, tmp_path, option, value):
    argv = ["data", *_data_args(workspace["npz"], tmp_path / "cache")]
    _assert_refused([*argv, option, value], [option], [tmp_path, workspace["cache"]])


@pytest.mark.parametrize(("option", "value"), _cases(TRAIN_OPTIONS))
def test_train_option(workspace, tmp_path, option, value):
    out = tmp_path / "run"
    argv = _train_argv(workspace["npz"], tmp_path / "cache", out)
    _assert_refused([*argv, option, value], [option], [tmp_path])
    assert not out.exists()


def test_negative_decay_value_of_a_weight_decay_reading(workspace, tmp_path):
    argv = _train_argv(workspace["npz"], tmp_path / "cache", tmp_path / "run", "--decay-reading", "l2")
    _assert_refused([*argv, "--decay-value", "-1"], ["--decay-value"], [tmp_path])


def test_bad_values_leave_a_finished_run_untouched_even_with_overwrite(workspace, tmp_path):
    # Every value is checked before --overwrite may delete anything (it used to find --beta 1 only at
    # the first batch, after the old run was gone).
    run = _copy_run(workspace, tmp_path)
    argv = _train_argv(workspace["npz"], workspace["cache"], run, "--overwrite", "--lr", "-1")
    _assert_refused(argv, ["--lr"], [run])
    head = tmp_path / "head"
    status, _, stderr = _call(["decouple", str(run), "--out", str(head), "--cache-dir", str(workspace["cache"])])
    assert status == 0, stderr
    argv = ["decouple", str(run), "--out", str(head), "--overwrite", "--beta", "1"]
    _assert_refused(argv, ["--beta"], [run, head])


@pytest.mark.parametrize(("option", "value"), _cases(DECOUPLE_OPTIONS))
def test_decouple_option(workspace, tmp_path, option, value):
    out = tmp_path / "head"
    argv = ["decouple", str(workspace["run"]), "--out", str(out), "--cache-dir", str(workspace["cache"])]
    _assert_refused([*argv, option, value], [option], [tmp_path, workspace["run"]])
    assert not out.exists()


@pytest.mark.parametrize(("option", "value"), _cases(REPRODUCE_OPTIONS))
def test_reproduce_option(workspace, tmp_path, option, value):
    out = tmp_path / "study"
    argv = ["reproduce", "--data", str(workspace["npz"]), "--weights", "none", "--freeze-blocks", "0"]
    _assert_refused([*argv, "--out", str(out), option, value], [option], [tmp_path])
    assert not out.exists()


def test_out_that_is_a_file(workspace, tmp_path):
    out = tmp_path / "run"
    out.write_text("not a directory")
    _assert_refused(_train_argv(workspace["npz"], tmp_path / "cache", out), [str(out)], [tmp_path])


def test_cache_dir_that_is_a_file(workspace, tmp_path):
    cache = tmp_path / "cache"
    cache.write_text("not a directory")
    _assert_refused(["data", *_data_args(workspace["npz"], cache)], [str(cache)], [tmp_path])


def test_decouple_into_its_own_stage1_run(workspace, tmp_path):
    run = _copy_run(workspace, tmp_path)
    _assert_refused(["decouple", str(run), "--out", str(run), "--overwrite"], [str(run)], [run])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lr=st.one_of(st.floats(max_value=0.0), st.just(math.nan), st.just(math.inf)),
    epochs=st.integers(max_value=0),
)
def test_any_non_positive_lr_or_epochs_is_refused(workspace, tmp_path, lr, epochs):
    out = tmp_path / "hypothesis-run"
    argv = _train_argv(workspace["npz"], tmp_path / "cache", out)
    _assert_refused([*argv, "--lr", repr(lr)], ["--lr"], [tmp_path])
    _assert_refused([*argv, "--epochs", str(epochs)], ["--epochs"], [tmp_path])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(beta=st.one_of(st.floats(min_value=1.0), st.floats(max_value=-1e-12), st.just(math.nan)))
def test_any_class_balanced_beta_outside_0_1_is_refused(workspace, tmp_path, beta):
    out = tmp_path / "hypothesis-head"
    argv = ["decouple", str(workspace["run"]), "--out", str(out), "--beta", repr(beta)]
    _assert_refused(argv, ["--beta"], [tmp_path, workspace["run"]])


# ---------------------------------------------------------------- stage 2: nothing asked is silently ignored

UNUSED_DECOUPLE_OPTIONS = [
    (["--loss", "balanced-softmax", "--tau", "2", "--gamma", "5"], ["--tau 2", "--gamma 5", "balanced-softmax"]),
    (["--method", "tau-norm", "--loss", "focal"], ["--loss focal", "--method tau-norm", "--method retrain"]),
    (["--method", "post-hoc-la", "--loss", "ce"], ["--loss ce", "--method post-hoc-la"]),
    (["--method", "post-hoc-la", "--epochs", "30"], ["--epochs 30", "--method post-hoc-la", "trains nothing"]),
    (["--method", "tau-norm", "--seed", "0"], ["--seed 0", "--method tau-norm"]),
    (["--method", "lws", "--loss", "crt"], ["--loss crt", "--method lws"]),
    (["--method", "lws", "--tau", "1"], ["--tau 1", "--method lws"]),
    (["--loss", "focal", "--beta", "0.99"], ["--beta 0.99", "--loss focal", "class-balanced and cb-focal"]),
    (["--gamma", "2"], ["--gamma 2", "--loss ce", "focal and cb-focal"]),
    (["--loss", "balanced-softmax", "--tune"], ["--tune", "balanced-softmax has no knob", "tau = 1"]),
    (["--loss", "modified-ce", "--tune"], ["--tune", "tau is tuned on validation"]),
    (["--loss", "focal", "--gamma", "2", "--tune"], ["--tune", "--gamma", "nothing to tune"]),
]


@pytest.mark.parametrize(("options", "names"), UNUSED_DECOUPLE_OPTIONS, ids=lambda v: " ".join(v))
def test_decouple_refuses_an_option_that_the_loss_or_method_does_not_use(workspace, tmp_path, options, names):
    out = tmp_path / "head"
    argv = ["decouple", str(workspace["run"]), "--out", str(out), "--cache-dir", str(workspace["cache"]), *options]
    _assert_refused(argv, names, [tmp_path, workspace["run"]])
    assert not out.exists()


@pytest.fixture(scope="module")
def no_validation_run(workspace) -> Path:
    """A finished stage-1 run trained with --val-per-class 0: nothing to tune on."""
    run = workspace["root"] / "stage1-no-validation"
    argv = _train_argv(workspace["npz"], workspace["cache"], run, "--val-per-class", "0")
    status, _, stderr = _call(argv)
    assert status == 0, stderr
    return run


@pytest.mark.parametrize(
    ("options", "names"),
    [
        (
            ["--loss", "modified-ce"],
            ["choosing tau and the feature size needs a validation split", "--val-per-class 0", "--tau"],
        ),
        (["--loss", "focal", "--tune"], ["choosing gamma and the feature size needs a validation split", "--gamma"]),
        (["--method", "post-hoc-la"], ["choosing tau and the feature size needs a validation split"]),
        (["--loss", "ce"], ["choosing the feature size needs a validation split", "--feature-size stage1"]),
    ],
)
def test_decouple_without_a_validation_split_refuses_to_tune_before_making_its_directory(
    workspace, no_validation_run, tmp_path, options, names
):
    out = tmp_path / "new" / "head"
    argv = ["decouple", str(no_validation_run), "--out", str(out), "--cache-dir", str(workspace["cache"]), *options]
    _assert_refused(argv, [str(out), *names], [tmp_path, no_validation_run])
    assert not (tmp_path / "new").exists()
    # A given temperature and feature size need no validation split.
    given = ["--loss", "modified-ce", "--tau", "1", "--feature-size", "stage1", "--epochs", "1"]
    status, _, stderr = _call([*argv[: -len(options)], *given])
    assert status == 0, stderr


def test_a_failed_decouple_leaves_no_run_directory_and_an_old_run_as_it_was(workspace, tmp_path, monkeypatch):
    from longtail import decouple
    from longtail.errors import LongtailError

    run = _copy_run(workspace, tmp_path)
    old = tmp_path / "old-head"
    common = ["--cache-dir", str(workspace["cache"]), "--epochs", "1"]
    status, _, stderr = _call(["decouple", str(run), "--out", str(old), *common])
    assert status == 0, stderr

    def fail(*args, **kwargs):
        raise LongtailError("the head diverged")  # as any failure while fitting

    monkeypatch.setattr(decouple, "fit_stage2_heads", fail)
    new = tmp_path / "a" / "b" / "head"
    _assert_refused(["decouple", str(run), "--out", str(new), *common], ["the head diverged"], [tmp_path])
    assert not (tmp_path / "a").exists()
    _assert_refused(["decouple", str(run), "--out", str(old), "--overwrite", *common], ["diverged"], [old])
    assert (old / "head.pt").is_file()
    # decouple_many with several heads: none of the new directories stays.
    outs = {tmp_path / "many" / name: decouple.Stage2Config(loss=name, epochs=1) for name in ("ce", "focal")}
    with pytest.raises(LongtailError, match="diverged"):
        decouple.decouple_many(run, outs, cache_dir=workspace["cache"])
    assert not (tmp_path / "many").exists()


def test_decouple_tune_records_what_it_chose_and_what_it_used(workspace, tmp_path):
    run = _copy_run(workspace, tmp_path)
    common = ["--cache-dir", str(workspace["cache"]), "--epochs", "1"]
    tuned, fixed = tmp_path / "tuned", tmp_path / "fixed"
    status, _, stderr = _call(["decouple", str(run), "--out", str(tuned), "--loss", "cb-focal", "--tune", *common])
    assert status == 0, stderr
    record = json.loads((tuned / "run.json").read_text())
    assert record["config"]["tune"] is True and record["config"]["gamma"] is None and record["config"]["beta"] is None
    chosen = record["chosen"]
    assert chosen["tuned"] == ["beta", "gamma"] and len(chosen["val_accuracy_by_setting"]) == 16
    assert record["beta"] == chosen["beta"] and {"beta", "gamma"} <= set(chosen)
    # A fixed head records the values it used and None for what its loss does not have.
    status, _, stderr = _call(["decouple", str(run), "--out", str(fixed), "--loss", "balanced-softmax", *common])
    assert status == 0, stderr
    record = json.loads((fixed / "run.json").read_text())
    assert (record["config"]["tau"], record["config"]["gamma"], record["config"]["beta"]) == (None, None, None)
    assert (record["config"]["epochs"], record["config"]["lr"], record["config"]["seed"]) == (1, 1e-3, 0)
    assert record["chosen"].pop("feature_size_grid").keys() == {"32", "48"}  # the stage-1 test size and 16 px up
    assert record["chosen"] == {"loss": "balanced-softmax"} and record["beta"] is None


def test_reproduce_finds_a_missing_validation_split_before_any_training(workspace, tmp_path):
    out = tmp_path / "study"
    argv = ["reproduce", "--data", str(workspace["npz"]), "--weights", "none", "--freeze-blocks", "0"]
    argv += ["--val-per-class", "0", "--out", str(out), "--cache-dir", str(tmp_path / "cache")]
    # The heads choosing their own feature size (--feature-size auto) tune it on validation too.
    line = _assert_refused(
        [*argv, "--feature-size", "auto"],
        [
            "--val-per-class 0",
            "decoupled-modified-ce (tau and the feature size)",
            "decoupled-focal-tuned (gamma and the feature size)",
            "decoupled-balanced-softmax (the feature size)",
            "--val-fraction",
        ],
        [tmp_path],
    )
    assert "decoupled-cb-focal-tuned (beta and gamma and the feature size)" in line
    # The cpu preset's heads are at the stage-1 size: only their own knobs are tuned.
    line = _assert_refused(argv, ["--val-per-class 0", "decoupled-modified-ce (tau)", "--val-fraction"], [tmp_path])
    assert "feature size" not in line and "decoupled-balanced-softmax" not in line
    assert not out.exists() and not (tmp_path / "cache").exists()  # refused before even reading the data


# ---------------------------------------------------------------- test and target priors

BAD_PRIOR_NAMES = ["sideways", "forward-0.5", "backward-0", "forward-x", "uniform,,train", "train,train"]


def _weights_file(tmp_path: Path, kind: str) -> Path:
    """A weights file that no run of the 4-class workspace accepts (``kind``), or that only a test
    prior accepts (``zero-class``)."""
    path = tmp_path / f"{kind}.txt"
    path.write_text(
        {
            "wrong-count": "1 2 3",
            "negative": "1 2 -1 3",
            "all-zero": "0 0 0 0",
            "not-numbers": "1 2 three 4",
            "zero-class": "1 0 2 3",
        }[kind]  # fmt: skip
    )
    return path


BAD_WEIGHTS = ["wrong-count", "negative", "all-zero", "not-numbers"]


def _prior_commands(workspace: dict, tmp_path: Path) -> dict[str, tuple[list[str], Path]]:
    """Per command that takes --test-priors: its argv up to the option and what it would write."""
    run = _copy_run(workspace, tmp_path)
    cache = ["--cache-dir", str(workspace["cache"])]
    return {
        "train": (_train_argv(workspace["npz"], tmp_path / "cache", tmp_path / "new-run"), tmp_path / "new-run"),
        "decouple": (["decouple", str(run), "--out", str(tmp_path / "head"), *cache], tmp_path / "head"),
        "evaluate": (["evaluate", str(run), *cache], run / "metrics.json"),
        "reproduce": (
            [
                "reproduce",
                "--data",
                str(workspace["npz"]),
                "--weights",
                "none",
                "--freeze-blocks",
                "0",
                "--out",
                str(tmp_path / "study"),
                "--cache-dir",
                str(tmp_path / "cache"),
            ],  # fmt: skip
            tmp_path / "study",
        ),
    }


@pytest.mark.parametrize("command", ["train", "decouple", "evaluate", "reproduce"])
@pytest.mark.parametrize("value", BAD_PRIOR_NAMES + BAD_WEIGHTS)
def test_a_bad_test_prior_is_refused_before_anything_is_written(workspace, tmp_path, command, value):
    argv, written = _prior_commands(workspace, tmp_path)[command]
    if value in BAD_WEIGHTS:
        value = str(_weights_file(tmp_path, value))
    existed = written.exists()
    _assert_refused([*argv, "--test-priors", value], ["--test-priors"], [tmp_path, workspace["cache"]])
    assert written.exists() == existed


def _predict_argv(workspace: dict, tmp_path: Path) -> list[str]:
    image = tmp_path / "image.png"
    image.write_bytes(_png_bytes())
    return ["predict", str(workspace["run"]), str(image), "--out", str(tmp_path / "predictions.csv")]


@pytest.mark.parametrize("command", ["decouple", "predict"])
@pytest.mark.parametrize("value", ["sideways", "forward-0.5", "train,uniform", *BAD_WEIGHTS, "zero-class"])
def test_a_bad_target_prior_is_refused_before_anything_is_written(workspace, tmp_path, command, value):
    if command == "decouple":
        argv = _prior_commands(workspace, tmp_path)["decouple"][0]
    else:
        argv = _predict_argv(workspace, tmp_path)
    if value in (*BAD_WEIGHTS, "zero-class"):
        value = str(_weights_file(tmp_path, value))
    _assert_refused(
        [*argv, "--target-prior", value], ["--target-prior"], [tmp_path, workspace["cache"], workspace["run"]]
    )
    assert not (tmp_path / "head").exists() and not (tmp_path / "predictions.csv").exists()


def test_a_weights_file_with_a_class_at_zero_is_a_test_prior(workspace, tmp_path):
    run = _copy_run(workspace, tmp_path)
    weights = _weights_file(tmp_path, "zero-class")
    status, _, stderr = _call(["evaluate", str(run), "--cache-dir", str(workspace["cache"]), "--test-priors",
                               f"train,{weights}"])  # fmt: skip
    assert status == 0, stderr
    under = json.loads((run / "metrics.json").read_text())["under_prior"]
    assert list(under) == ["train", str(weights)] and under[str(weights)]["prior"] == [1 / 6, 0.0, 2 / 6, 3 / 6]


def test_a_target_prior_without_a_validation_split_is_refused(workspace, tmp_path):
    run = tmp_path / "no-val"
    argv = _train_argv(workspace["npz"], workspace["cache"], run)
    argv[argv.index("--val-per-class") + 1] = "0"
    status, _, stderr = _call(argv)
    assert status == 0, stderr
    head = tmp_path / "head"
    _assert_refused(
        [
            "decouple",
            str(run),
            "--out",
            str(head),
            "--feature-size",
            "stage1",
            "--loss",
            "ce",
            "--cache-dir",
            str(workspace["cache"]),
            "--target-prior",
            "train",
        ],  # fmt: skip
        ["--target-prior train", "validation split"],
        [tmp_path],
    )
    assert not head.exists()


# ---------------------------------------------------------------- what a command pairs must still fit


def test_evaluate_refuses_a_head_fitted_on_an_earlier_model_of_its_stage1_run(workspace, tmp_path):
    # `train --overwrite` (or `--resume --epochs N`) gives the stage-1 run a new model; a head fitted on
    # the old one would be scored on the new model's features.
    run, head, cache = _copy_run(workspace, tmp_path), tmp_path / "head", ["--cache-dir", str(workspace["cache"])]
    status, _, stderr = _call(["decouple", str(run), "--out", str(head), "--feature-size", "stage1", *cache])
    assert status == 0, stderr
    fitted_on = read_json(run / RUN_FILE)["model_sha256"]
    status, _, stderr = _call(_train_argv(workspace["npz"], workspace["cache"], run, "--epochs", "2", "--overwrite"))
    assert status == 0, stderr
    now = read_json(run / RUN_FILE)["model_sha256"]
    assert now != fitted_on
    names = [str(head), str(run.resolve()), fitted_on[:16], now[:16], "earlier model", "--overwrite"]
    _assert_refused(["evaluate", str(head), *cache], names, [head, run])


@pytest.fixture(scope="module")
def changed_data(tmp_path_factory) -> dict:
    """A finished stage-1 run and a stage-2 head on a tiny .npz, whose images were then edited in place
    (same path, shapes and labels: only its checksum tells); ``before``/``now``: its sha256 then and now."""
    root = tmp_path_factory.mktemp("changed-data")
    npz, cache, run, head = root / "tiny.npz", root / "cache", root / "stage1", root / "head"
    np.savez(npz, **_tiny_arrays())
    before = hashlib.sha256(npz.read_bytes()).hexdigest()
    torch.manual_seed(0)
    for argv in (_train_argv(npz, cache, run), ["decouple", str(run), "--out", str(head), "--cache-dir", str(cache)]):
        status, _, stderr = _call(argv)
        assert status == 0, stderr
    assert read_json(run / RUN_FILE)["data_sha256"] == before
    edited = _tiny_arrays()
    edited["x_train"] = 255 - edited["x_train"]
    np.savez(npz, **edited)
    image = root / "new.png"
    image.write_bytes(_png_bytes())
    now = hashlib.sha256(npz.read_bytes()).hexdigest()
    return {"npz": npz, "cache": cache, "run": run, "head": head, "image": image, "before": before, "now": now}


@pytest.mark.parametrize("command", ["train-resume", "decouple", "evaluate", "evaluate-head", "predict-target-prior"])
def test_a_data_source_changed_since_training_is_refused(changed_data, tmp_path, command):
    npz, cache, run, head = (changed_data[key] for key in ("npz", "cache", "run", "head"))
    argv = {
        "train-resume": _train_argv(npz, cache, run, "--epochs", "2", "--resume"),  # against its checkpoint
        "decouple": ["decouple", str(run), "--out", str(tmp_path / "new-head"), "--cache-dir", str(cache)],
        "evaluate": ["evaluate", str(run), "--cache-dir", str(cache)],
        "evaluate-head": ["evaluate", str(head), "--cache-dir", str(cache)],
        "predict-target-prior": [
            "predict", str(run), str(changed_data["image"]), "--target-prior", "train", "--cache-dir", str(cache)
        ],  # fmt: skip
    }[command]
    names = [str(npz), changed_data["before"][:16], changed_data["now"][:16], "--overwrite"]
    _assert_refused(argv, names, [run, head, tmp_path])


def test_predict_target_prior_reads_the_run_data_under_cache_dir(workspace, tmp_path):
    cache, image = tmp_path / "cache", tmp_path / "new.png"
    image.write_bytes(_png_bytes())
    argv = ["predict", str(workspace["run"]), str(image), "--target-prior", "train", "--cache-dir", str(cache)]
    status, stdout, stderr = _call(argv)
    assert status == 0, stderr
    assert stdout.startswith("path,predicted_class,probability")
    assert list((cache / "indices").glob("*.json"))  # the run's split read (its index file) under --cache-dir


def test_resume_into_an_out_that_holds_no_run_is_refused(workspace, tmp_path):
    out = tmp_path / "mistyped"
    argv = _train_argv(workspace["npz"], workspace["cache"], out, "--resume")
    _assert_refused(argv, ["nothing to resume", str(out), "without --resume"], [tmp_path])
    assert not out.exists()


@pytest.mark.parametrize("command", ["train", "reproduce"])
def test_frozen_blocks_without_pretrained_weights_are_refused(workspace, tmp_path, command):
    out = tmp_path / "out"
    if command == "train":  # given
        argv, names = _train_argv(workspace["npz"], tmp_path / "cache", out, "--freeze-blocks", "2"), ["2 blocks"]
    else:  # the cpu preset's (`reproduce`'s default) four blocks
        argv, names = ["reproduce", "--data", str(workspace["npz"]), "--weights", "none", "--out", str(out)], ["4"]
    _assert_refused(argv, ["--freeze-blocks", "--weights none", *names], [tmp_path])
    assert not out.exists()


def test_a_resume_may_change_the_device_and_records_every_session(workspace, tmp_path):
    run = tmp_path / "run"
    status, _, stderr = _call(_train_argv(workspace["npz"], workspace["cache"], run, "--device", "cpu"))
    assert status == 0, stderr
    status, _, stderr = _call(_train_argv(workspace["npz"], workspace["cache"], run, "--epochs", "2", "--resume"))
    assert status == 0, stderr  # --device auto now, cpu before: nothing that is trained changed
    record = read_json(run / RUN_FILE)
    assert record["config"]["device"] == "auto" and [r["epoch"] for r in record["history"]] == [1, 2]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    assert record["sessions"] == [
        {"device": "cpu", "compile": False, "world_size": 1, "first_epoch": 1},
        {"device": device, "compile": False, "world_size": 1, "first_epoch": 2},
    ]
