"""A CI run never passes without the real data: the tests that need ``../shared`` (the real CIFAR-10,
the pretrained weights: ``conftest.shared_file``) skip where it is missing, but fail under
``CI=true``, which ``.ci/run`` sets before the README's ``make test``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
CI_SCRIPT = TESTS.parent / ".ci" / "run"


def _pytest_without_shared_files(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess:
    """pytest on two tests that take the real-data fixtures, with this conftest and a
    ``shared_files`` whose files do not exist, under ``CI=ci`` (unset: None)."""
    project = tmp_path / "project"
    project.mkdir(exist_ok=True)
    shutil.copy(TESTS / "conftest.py", project / "conftest.py")
    absent = tmp_path / "no-shared"
    (project / "shared_files.py").write_text(
        f"from pathlib import Path\nCIFAR10_NPZ = Path({str(absent / 'cifar10.npz')!r})\n"
        f"WEIGHTS = Path({str(absent / 'b0.pth')!r})\n"
    )
    (project / "test_real.py").write_text(
        "def test_data(cifar10_npz):\n    pass\n\n\ndef test_weights(weights_file):\n    pass\n"
    )
    env = {key: value for key, value in os.environ.items() if key not in ("CI", "PYTEST_ADDOPTS")}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rfs", "-p", "no:cacheprovider", str(project)],
        cwd=project, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_real_data_tests_skip_without_shared_files_but_fail_under_ci(tmp_path):
    local = _pytest_without_shared_files(tmp_path, None)
    summary = local.stdout.strip().splitlines()[-1]
    assert local.returncode == 0 and summary.startswith("2 skipped"), local.stdout[-2000:]
    assert "real CIFAR-10 not found at" in local.stdout and "shared weights not found at" in local.stdout
    ci = _pytest_without_shared_files(tmp_path, "true")
    summary = ci.stdout.strip().splitlines()[-1]
    assert ci.returncode == 1 and summary.startswith("2 errors") and "skipped" not in summary, ci.stdout[-2000:]
    assert "CI=true" in ci.stdout and str(tmp_path / "no-shared" / "cifar10.npz") in ci.stdout


def test_the_ci_script_sets_ci_and_runs_the_readme_test_command():
    lines = [line.split("#")[0].strip() for line in CI_SCRIPT.read_text().splitlines()]
    assert "export CI=true" in lines
    assert lines.index("export CI=true") < lines.index("make test")
