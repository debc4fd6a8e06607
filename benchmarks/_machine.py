"""Describe the machine a benchmark ran on (printed with every result)."""

from __future__ import annotations

import os
import platform

import torch


def describe() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (f"{cpu}; {os.cpu_count()} cores; torch {torch.__version__}; GPU: {gpu}; "
            f"Python {platform.python_version()}")
