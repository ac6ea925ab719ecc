"""The command line on bad input: exit code 2, one line on stderr naming the problem, no traceback,
and nothing written on disk.

Each case has its own LONGTAIL_CACHE, HOME and working directory. The parser needs no torch, but
a command that checks a value imports the library (torch: about 7 CPU-seconds on the 2 shared
cores), so only an argparse error, the weights files and the permission cases (which must
drop root privileges) run in a subprocess; the others call the same entry point,
``longtail.cli.main``, in-process. LONGTAIL_TEST_CLI_SUBPROCESS=1 runs every case in a subprocess.
All cases run once in a module fixture, the subprocesses a few at a time; the tests then read the
recorded results.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from longtail.data import load_arrays, long_tail_split
from shared_files import WEIGHTS

NOBODY = 65534
AS_ROOT = os.geteuid() == 0
SETPRIV = shutil.which("setpriv")
ALL_SUBPROCESS = os.environ.get("LONGTAIL_TEST_CLI_SUBPROCESS") == "1"


@dataclass
class Case:
    name: str
    argv: Callable[[dict], list[str]]  # from the paths of this run (see `_prepare`)
    expect: Callable[[dict], list[str]]  # substrings the error line must contain
    unprivileged: bool = False  # run as an ordinary user (root reads any file)
    subprocess: bool = True  # False: call longtail.cli.main in this process


def _train(paths: dict, *extra: str) -> list[str]:
    data = ["--data", str(paths["tiny"]), "--imbalance", "5", "--val-per-class", "2"]
    return ["train", *data, "--weights", "none", "--out", str(paths["out"]), *extra]


CASES = [
    Case(
        "missing-data",
        lambda p: _train(p, "--data", str(p["run"] / "absent.npz")),
        lambda p: [str(p["run"] / "absent.npz"), "does not exist"],
        subprocess=False,
    ),
    Case("unknown-option", lambda p: _train(p, "--frobnicate"), lambda p: ["--frobnicate"]),
    Case(
        "imbalance-below-one",
        lambda p: _train(p, "--imbalance", "0.5"),
        lambda p: ["--imbalance", "0.5"],
        subprocess=False,
    ),
    Case(
        "image-size-16",
        lambda p: _train(p, "--image-size", "16"),
        lambda p: ["--image-size", "16"],
        subprocess=False,
    ),
    Case("zero-epochs", lambda p: _train(p, "--epochs", "0"), lambda p: ["--epochs", "got 0"], subprocess=False),
    Case(
        "negative-epochs",
        lambda p: _train(p, "--epochs", "-2"),
        lambda p: ["--epochs", "got -2"],
        subprocess=False,
    ),
    Case(
        "zero-batch-size",
        lambda p: _train(p, "--batch-size", "0"),
        lambda p: ["--batch-size", "got 0"],
        subprocess=False,
    ),
    Case(
        "negative-batch-size",
        lambda p: _train(p, "--batch-size", "-1"),
        lambda p: ["--batch-size", "got -1"],
        subprocess=False,
    ),
    Case(
        "unknown-strategy",
        lambda p: _train(p, "--strategy", "focal-magic"),
        lambda p: ["focal-magic"],
        subprocess=False,
    ),
    Case(
        "unknown-decouple-loss",
        lambda p: ["decouple", str(p["run"] / "stage1"), "--out", str(p["out"]), "--loss", "hinge-ish"],
        lambda p: ["hinge-ish"],
        subprocess=False,
    ),
    Case(
        "unknown-decouple-method",
        lambda p: ["decouple", str(p["run"] / "stage1"), "--out", str(p["out"]), "--method", "re-rank"],
        lambda p: ["re-rank"],
        subprocess=False,
    ),
    Case(
        "decouple-zero-epochs",
        lambda p: ["decouple", str(p["run"] / "stage1"), "--out", str(p["out"]), "--epochs", "0"],
        lambda p: ["--epochs", "got 0"],
        subprocess=False,
    ),
    Case(
        "resnet-weights",
        lambda p: _train(p, "--weights", str(p["resnet"])),
        lambda p: [str(p["resnet"]), "EfficientNet-B0"],
    ),
    Case(
        "truncated-weights",
        lambda p: _train(p, "--weights", str(p["truncated"])),
        lambda p: [str(p["truncated"]), "truncated"],
    ),
    Case(
        "corrupted-index",
        lambda p: _train(p),
        lambda p: [str(p["index"]), "checksum"],
        subprocess=False,
    ),
    Case(
        "tarball-layout",
        lambda p: _train(p, "--data", str(p["bad_tarball"])),
        lambda p: [str(p["bad_tarball"]), "train"],
        subprocess=False,
    ),
    Case(
        "unreadable-image",
        lambda p: ["data", "--data", str(p["bad_images"])],
        lambda p: [str(p["bad_images"] / "train" / "a" / "1.png"), "not a readable image", "--skip-bad-images"],
        subprocess=False,
    ),
    Case(
        "no-test-folder",
        lambda p: ["data", "--data", str(p["no_test"])],
        lambda p: [str(p["no_test"]), "no test split", "--test-fraction"],
        subprocess=False,
    ),
    Case(
        "test-fraction-beside-a-test-split",
        lambda p: ["data", "--data", str(p["tiny"]), "--test-fraction", "0.2"],
        lambda p: [str(p["tiny"]), "has its own test split", "--test-fraction"],
        subprocess=False,
    ),
    Case(
        "val-fraction-empties-a-class",
        lambda p: (
            ["train", "--data", str(p["tiny"]), "--imbalance", "natural", "--val-fraction", "0.99"]
            + ["--weights", "none", "--out", str(p["out"])]
        ),
        lambda p: ["--val-fraction 0.99", "class 0 'airplane' (6 images)"],
        subprocess=False,
    ),
    Case(
        "predict-top-k-zero",
        lambda p: ["predict", str(p["run"] / "stage1"), str(p["tiny"]), "--top-k", "0"],
        lambda p: ["--top-k", "got 0"],
        subprocess=False,
    ),
    Case(
        "predict-unknown-output-format",
        lambda p: ["predict", str(p["run"] / "stage1"), str(p["tiny"]), "--out", str(p["run"] / "predictions.txt")],
        lambda p: [str(p["run"] / "predictions.txt"), "*.csv or *.json"],
        subprocess=False,
    ),
    Case(
        "predict-missing-run",
        lambda p: ["predict", str(p["run"] / "stage1"), str(p["tiny"])],
        lambda p: [str(p["run"] / "stage1"), "not a longtail run directory"],
        subprocess=False,
    ),
    *(
        []
        if torch.cuda.is_available()
        else [
            Case(
                "seed-preset-without-cuda",
                lambda p: ["reproduce", "--preset", "seed", "--data", str(p["tiny"]), "--out", str(p["out"])],
                lambda p: ["--preset seed", "no CUDA device", "--device cpu"],
                subprocess=False,
            ),
            Case(
                "reproduce-device-cuda-without-cuda",
                lambda p: ["reproduce", "--preset", "smoke", "--device", "cuda", "--data", str(p["tiny"])]
                + ["--weights", "none", "--out", str(p["out"])],
                lambda p: ["--device cuda", "no CUDA device"],
                subprocess=False,
            ),
        ]
    ),
    Case(
        "unreadable-file",
        lambda p: ["data", "--data", str(p["world"] / "locked.npz")],
        lambda p: [str(p["world"] / "locked.npz"), "not readable"],
        unprivileged=True,
    ),
    Case(
        "unsearchable-folder",
        lambda p: ["data", "--data", str(p["world"] / "private" / "tiny.npz")],
        lambda p: [str(p["world"] / "private" / "tiny.npz"), "cannot be accessed"],
        unprivileged=True,
    ),
]


def _snapshot(*roots: Path) -> dict:
    """Every file and folder under the roots: (kind, size, mtime) of files, kind of folders."""
    listing = {}
    for root in roots:
        for path in [root, *sorted(root.rglob("*"))] if root.exists() else []:
            stat = path.lstat()
            listing[str(path)] = ("dir",) if path.is_dir() else ("file", stat.st_size, stat.st_mtime_ns)
    return listing


def _prepare(inputs: Path, world: Path, run: Path, case: Case) -> dict:
    paths = {
        "tiny": inputs / "tiny.npz",
        "resnet": inputs / "resnet18.pth",
        "truncated": inputs / "truncated.pth",
        "bad_tarball": inputs / "bad.tar.gz",
        "bad_images": inputs / "bad-images",
        "no_test": inputs / "no-test",
        "world": world,
        "run": run,
        "out": run / "out",
        "cache": run / "cache",
        "home": run / "home",
    }
    for folder in ("cache", "home"):
        paths[folder].mkdir(parents=True)
    if case.name == "corrupted-index":
        arrays = load_arrays(paths["tiny"], paths["cache"])
        split = long_tail_split(arrays, 5, "exp", 0, 2, cache_dir=paths["cache"])  # what the case's argv asks for
        record = json.loads(split.index_file.read_text())
        record["train"][0] = next(i for i in range(len(arrays.y_train)) if i not in record["train"])
        split.index_file.write_text(json.dumps(record))
        paths["index"] = split.index_file
    return paths


def _subprocess(case: Case, paths: dict, env: dict) -> tuple[int, str, str]:
    argv = [sys.executable, "-m", "longtail", *case.argv(paths)]
    if case.unprivileged and AS_ROOT:
        # subprocess's own user= cannot exec the interpreter here (it lives under /root); setpriv can.
        argv = [SETPRIV, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv]
    completed = subprocess.run(argv, cwd=paths["cwd"], env=env, capture_output=True, text=True, timeout=300)
    return completed.returncode, completed.stdout, completed.stderr


def _in_process(case: Case, paths: dict, env: dict) -> tuple[int, str, str]:
    from longtail.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    os.environ.update(env)
    os.chdir(paths["cwd"])
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                rc = main(case.argv(paths))
            except SystemExit as exit_:  # what `python -m longtail` would turn it into
                rc = exit_.code
            except BaseException:
                traceback.print_exc()
                rc = 1
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    return rc, stdout.getvalue(), stderr.getvalue()


def _run(case: Case, paths: dict) -> dict:
    unprivileged = case.unprivileged and AS_ROOT
    paths["cwd"] = paths["world"] if unprivileged else paths["run"]
    env = {
        **{k: v for k, v in os.environ.items() if k != "LONGTAIL_DATA"},
        "LONGTAIL_CACHE": str(paths["world"] / "cache" if unprivileged else paths["cache"]),
        "HOME": str(paths["world"] if unprivileged else paths["home"]),
        "OMP_NUM_THREADS": "1",
    }
    watched = (paths["run"], paths["world"], paths["tiny"].parent)
    before = _snapshot(*watched)
    started = time.perf_counter()
    rc, stdout, stderr = (_subprocess if case.subprocess or ALL_SUBPROCESS else _in_process)(case, paths, env)
    return {
        "rc": rc,
        "stdout": stdout,
        "stderr": stderr,
        "seconds": time.perf_counter() - started,
        "before": before,
        "after": _snapshot(*watched),
        "paths": paths,
    }


@pytest.fixture(scope="module")
def results(tmp_path_factory, tiny_arrays) -> dict[str, dict]:
    from torchvision.models import resnet18

    inputs = tmp_path_factory.mktemp("cli-inputs")
    np.savez(inputs / "tiny.npz", **tiny_arrays)
    torch.save(resnet18().state_dict(), inputs / "resnet18.pth")
    with open(WEIGHTS if WEIGHTS.is_file() else inputs / "resnet18.pth", "rb") as handle:
        (inputs / "truncated.pth").write_bytes(handle.read(1 << 20))
    layout = inputs / "layout" / "pictures" / "cat"  # no train/ or test/
    layout.mkdir(parents=True)
    (layout / "0.png").write_bytes(b"not even an image")
    with tarfile.open(inputs / "bad.tar.gz", "w:gz") as archive:
        archive.add(inputs / "layout", arcname="bad")
    shutil.rmtree(inputs / "layout")
    image = tiny_arrays["x_train"][0]
    for folder, files in (
        ("bad-images", ["train/a/0.png", "train/b/0.png", "test/a/0.png", "test/b/0.png"]),
        ("no-test", ["train/a/0.png", "train/b/0.png"]),
    ):
        for name in files:
            (inputs / folder / name).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(inputs / folder / name)
    (inputs / "bad-images" / "train" / "a" / "1.png").write_bytes(b"not even an image")

    # Readable paths for an ordinary user (pytest's own tmp folders are private to root).
    world = Path(tempfile.mkdtemp(prefix="longtail-cli-"))
    world.chmod(0o755)
    shutil.copy(inputs / "tiny.npz", world / "locked.npz")
    (world / "locked.npz").chmod(0o000)
    (world / "private").mkdir(mode=0o700)
    shutil.copy(inputs / "tiny.npz", world / "private" / "tiny.npz")

    runnable = [case for case in CASES if not (case.unprivileged and AS_ROOT and SETPRIV is None)]
    jobs = [(case, _prepare(inputs, world, tmp_path_factory.mktemp(case.name), case)) for case in runnable]
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            futures = {
                case.name: pool.submit(_run, case, paths) for case, paths in jobs if case.subprocess or ALL_SUBPROCESS
            }
            outcomes = {case.name: _run(case, paths) for case, paths in jobs if case.name not in futures}
            outcomes.update({name: future.result() for name, future in futures.items()})
    finally:
        shutil.rmtree(world, ignore_errors=True)
    return outcomes


def _params():
    params = []
    for case in CASES:
        marks = []
        if case.unprivileged and AS_ROOT and SETPRIV is None:
            marks.append(pytest.mark.skip(reason="running as root without setpriv: every file is readable"))
        params.append(pytest.param(case, id=case.name, marks=marks))
    return params


@pytest.mark.parametrize("case", _params())
def test_error_is_one_line_with_exit_code_2(results, case):
    result = results[case.name]
    assert "Traceback" not in result["stdout"] + result["stderr"], result["stderr"]
    assert result["rc"] == 2, result["stderr"]
    lines = result["stderr"].splitlines()
    assert len(lines) == 1, result["stderr"]
    assert lines[0].startswith("longtail: error: ")
    for expected in case.expect(result["paths"]):
        assert expected in lines[0]
    assert result["stdout"] == ""


@pytest.mark.parametrize("case", _params())
def test_error_writes_nothing(results, case):
    result = results[case.name]
    assert result["rc"] == 2
    before, after = result["before"], result["after"]
    created = sorted(set(after) - set(before))
    changed = sorted(k for k in set(after) & set(before) if after[k] != before[k])
    removed = sorted(set(before) - set(after))
    assert not created and not changed and not removed, {"created": created, "changed": changed, "removed": removed}


def test_help_and_argument_errors_need_no_torch():
    # `longtail --help` and a mistyped option answer at once: building the parser imports no torch.
    code = (
        "import sys; from longtail.cli import build_parser, main; build_parser(); "
        "assert main(['train', '--out', 'run', '--frobnicate']) == 2; "
        "assert 'torch' not in sys.modules, 'the parser imported torch'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--frobnicate" in result.stderr
