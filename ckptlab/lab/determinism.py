"""When a resume can be bit-exact, and the settings that make it so on a GPU.

Bit-for-bit equality needs the resumed run to perform the same floating-point operations in the
same order as the uninterrupted one: the same library versions, the same number of threads, the
same hardware and device. On a GPU that is not enough: some kernels add in an order that varies
from run to run (atomic additions, split reductions in cuBLAS), unless deterministic algorithms
are switched on. :func:`make_gpu_deterministic` does that; every ``Trainer`` whose device is a
GPU calls it (so the lessons' training subprocesses and ranks do), and importing
:mod:`ckptlab.lab` calls it for the notebook's own process, so the lessons' exact-resume asserts
hold on a GPU as on a CPU.
:func:`reproducibility_rows` puts what a checkpoint recorded next to what this process runs.

Introduced in notebook ``04_interrupt_and_resume``.
"""

from __future__ import annotations

import os
from typing import Any

# The switch lives beside the DQN run's device choice: every Trainer on a GPU calls it (the
# lessons' subprocess and multi-rank runs included); importing ckptlab.lab calls it too.
from ..dqn.agent import CUBLAS_WORKSPACE, make_gpu_deterministic


def reproducibility_rows(checkpoint: Any) -> list[dict[str, Any]]:
    """What must match for a bit-exact resume, as recorded in ``checkpoint``'s manifest and as
    this process has it: library versions, the thread count, the device, and (on a GPU) the
    deterministic settings."""
    import gymnasium
    import numpy
    import torch

    from ..dqn.agent import resolve_device
    from ..engine import read_manifest

    manifest = read_manifest(checkpoint)
    recorded = manifest.get("versions", {})
    config = manifest.get("config") or {}
    device = str(resolve_device(str(config.get("device", "auto"))))
    here = {"torch": torch.__version__, "numpy": numpy.__version__,
            "gymnasium": gymnasium.__version__}
    rows = [{"what": f"{name} version", "in the checkpoint": recorded.get(name, "-"),
             "here": version} for name, version in here.items()]
    rows.append({"what": "CPU threads (num_threads)", "in the checkpoint":
                 config.get("num_threads", "-"), "here": torch.get_num_threads()})
    rows.append({"what": "device", "in the checkpoint": config.get("device", "-"),
                 "here": device})
    gpu = torch.cuda.is_available()
    rows.append({"what": "deterministic algorithms (GPU)", "in the checkpoint": "-",
                 "here": ("on" if torch.are_deterministic_algorithms_enabled() else "OFF")
                 if gpu else "not needed on a CPU"})
    rows.append({"what": "CUBLAS_WORKSPACE_CONFIG (GPU)", "in the checkpoint": "-",
                 "here": os.environ.get("CUBLAS_WORKSPACE_CONFIG", "unset")
                 if gpu else "not needed on a CPU"})
    for row in rows:
        recorded_value = row["in the checkpoint"]
        row["same?"] = ("-" if recorded_value == "-" else
                        "yes" if str(recorded_value) == str(row["here"]) or
                        (row["what"] == "device" and recorded_value == "auto") else "NO")
    return rows


__all__ = ["CUBLAS_WORKSPACE", "make_gpu_deterministic", "reproducibility_rows"]
