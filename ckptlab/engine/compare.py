"""Compare two checkpoints component by component, leaf by leaf, bit for bit.

Introduced in notebook ``04_interrupt_and_resume`` (the resumed run *is* the uninterrupted one).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .reader import load_checkpoint_state


@dataclass
class ComponentComparison:
    """How one component of two checkpoints compares."""

    name: str
    leaves: int = 0
    differing: list[str] = field(default_factory=list)  # paths of leaves that differ
    max_abs_diff: float = 0.0                            # over differing numeric arrays

    @property
    def identical(self) -> bool:
        return not self.differing


def _as_array(x: Any) -> np.ndarray | None:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    return None


def compare_values(a: Any, b: Any, path: str, out: ComponentComparison) -> None:
    arr_a, arr_b = _as_array(a), _as_array(b)
    if arr_a is not None or arr_b is not None:
        out.leaves += 1
        if arr_a is None or arr_b is None or arr_a.shape != arr_b.shape \
                or arr_a.dtype != arr_b.dtype:
            out.differing.append(path)
        elif arr_a.tobytes() != arr_b.tobytes():  # bitwise: NaN == NaN, 0.0 != -0.0
            out.differing.append(path)
            if arr_a.dtype.kind in "fiu":
                diff = np.abs(arr_a.astype(np.float64) - arr_b.astype(np.float64))
                out.max_abs_diff = max(out.max_abs_diff, float(np.nanmax(diff, initial=0.0)))
        return
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            if key not in a or key not in b:
                out.leaves += 1
                out.differing.append(f"{path}/{key}")
            else:
                compare_values(a[key], b[key], f"{path}/{key}", out)
        return
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and type(a) is type(b):
        if len(a) != len(b):
            out.leaves += 1
            out.differing.append(f"{path} (length {len(a)} vs {len(b)})")
            return
        for i, (x, y) in enumerate(zip(a, b)):
            compare_values(x, y, f"{path}/{i}", out)
        return
    out.leaves += 1
    same = type(a) is type(b) and (a == b or (a != a and b != b))  # NaN equals NaN here
    if not same:
        out.differing.append(path)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            out.max_abs_diff = max(out.max_abs_diff, abs(float(a) - float(b)))


def compare_checkpoints(a: str | os.PathLike[str],
                        b: str | os.PathLike[str]) -> list[ComponentComparison]:
    """Compare every component of checkpoints ``a`` and ``b`` (both verified on load)."""
    _, states_a = load_checkpoint_state(a)
    _, states_b = load_checkpoint_state(b)
    result = []
    for name in sorted(set(states_a) | set(states_b)):
        comparison = ComponentComparison(name)
        if name not in states_a or name not in states_b:
            comparison.differing.append("(component missing in one checkpoint)")
        else:
            compare_values(states_a[name], states_b[name], name, comparison)
        result.append(comparison)
    return result
