"""Tools to stage failures for teaching: a corrupted file, and a pickle with a harmless payload.

Introduced in notebook ``07_failure_modes``.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path


class MarkerPayload:
    """Unpickling this object creates an empty marker file: visible proof that *loading* a
    pickle ran code. Harmless by design; a real attacker's payload would be anything at all."""

    def __init__(self, marker: str | os.PathLike[str]) -> None:
        self.marker = Path(marker)

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return (Path.touch, (self.marker,))


def plant_pickle(path: str | os.PathLike[str], marker: str | os.PathLike[str]) -> Path:
    """Write a pickle whose loading would create ``marker``; return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps({"weights": [0.1, 0.2], "payload": MarkerPayload(marker)}))
    return path


def flip_byte(path: str | os.PathLike[str], offset: int | None = None) -> int:
    """Flip one bit of one byte (the middle one by default), like a disk or network error;
    returns the offset changed."""
    path = Path(path)
    data = bytearray(path.read_bytes())
    where = len(data) // 2 if offset is None else offset
    data[where] ^= 0x01
    path.write_bytes(bytes(data))
    return where
