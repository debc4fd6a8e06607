"""When a resume can be bit-exact, and the settings that make it so on a GPU.

Bit-for-bit equality needs the resumed run to perform the same floating-point operations in the
same order as the uninterrupted one: the same library versions, the same number of threads, the
same hardware and device. On a GPU that is not enough: some kernels add in an order that varies
from run to run (atomic additions, split reductions in cuBLAS), unless deterministic algorithms
are switched on. :func:`make_gpu_deterministic` does that, and importing :mod:`ckptlab.lab`
calls it, so the lessons' exact-resume asserts hold on a GPU as on a CPU.
:func:`reproducibility_rows` puts what a checkpoint recorded next to what this process runs.

Introduced in notebook ``04_interrupt_and_resume``.
"""

from __future__ import annotations

import os
from typing import Any

CUBLAS_WORKSPACE = ":4096:8"
"""cuBLAS's fixed workspace setting that makes its reductions deterministic (PyTorch's
reproducibility notes); read when cuBLAS starts, so it must be set before the first GPU matmul."""


def make_gpu_deterministic() -> bool:
    """If PyTorch sees a CUDA GPU: set ``CUBLAS_WORKSPACE_CONFIG`` (unless already set), switch
    on ``torch.use_deterministic_algorithms`` (warning, not failing, for an operation that has
    no deterministic implementation) and turn off cuDNN's benchmark-driven algorithm choice.

    Returns whether a GPU was found (on a CPU nothing is changed: its kernels are already
    deterministic for a fixed thread count).
    """
    import torch

    if not torch.cuda.is_available():
        return False
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    return True


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
