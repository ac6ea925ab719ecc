"""The machine a study or a benchmark ran on: the CPU model and its cores, torch and its threads,
Python, the GPU (``results.json``'s environment; the benchmarks' JSON lines)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware_description(device: torch.device) -> dict:
    """What ``results.json`` records of the machine (its ``environment``, with the data and weights):
    with ``gpu``, the name of the GPU used, only where ``device`` is one."""
    description = {
        "cpu": cpu_name(),
        "cpu_cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }
    if device.type == "cuda":
        description["gpu"] = torch.cuda.get_device_name(device)
    return description
