"""The host memory policy (``longtail.allocator``): with it, the memory a batch frees is reused by the
next batch instead of being handed back to the kernel and faulted in afresh; and every command runs
under it.

The probe runs in processes of their own (the policy is process-wide and cannot be undone) and
counts minor page faults, not time: a pattern of large blocks like a network's activations, freed
and allocated again, faults in every page each time under glibc's default and almost none once the
freed memory is kept."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

import longtail.cli
from longtail.allocator import keep_freed_memory

SRC = Path(__file__).resolve().parents[1] / "src"
ON_GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

PROBE = """
import resource, sys
import torch
from longtail.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
block = 16 * 2**20  # floats: 64 MB, above glibc's largest mmap threshold (32 MB)
def batch():
    a = torch.ones(block); b = torch.ones(block // 3); del a
    c = torch.ones(2 * block); del b, c
batch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    batch()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""


def _faults_per_batch(policy: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", PROBE, policy], env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not ON_GLIBC, reason="the policy is glibc's mallopt")
def test_kept_memory_is_reused_by_the_next_batch_instead_of_faulted_in_again():
    pages_per_batch = (16 + 16 // 3 + 32) * 2**20 * 4 // os.sysconf("SC_PAGE_SIZE")  # the three blocks' pages
    default = _faults_per_batch("default")
    kept = _faults_per_batch("keep")
    assert default > 0.8 * pages_per_batch  # glibc's default: every page of every block faulted in again
    assert kept < 0.2 * default, (kept, default)


@pytest.mark.skipif(not ON_GLIBC, reason="the policy is glibc's mallopt")
def test_the_policy_is_taken_on_glibc():
    assert keep_freed_memory() is True


def test_every_command_runs_under_the_policy(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(longtail.cli, "keep_freed_memory", lambda: calls.append("policy") or True)
    assert longtail.cli.main(["data", "--data", "/nonexistent/cifar10.npz"]) == 2
    assert calls == ["policy"]
    assert "nonexistent" in capsys.readouterr().err
