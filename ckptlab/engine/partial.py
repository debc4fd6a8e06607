"""Load part of a checkpoint, and export weights or metadata for use without ckptlab.

* :func:`load_components` restores only some components (``keys=["agent"]``).
* :func:`load_parameters` copies only the tensors whose names match a regex into a module -
  for example warm-starting a fresh agent's Q-network from another run - and reports what was
  loaded and what was skipped. A shape mismatch is an error that names the tensor.
* :func:`export_checkpoint` writes weights only (one safetensors file that any PyTorch user
  loads with ``safetensors.torch.load_file`` + ``load_state_dict``), metadata only (JSON), or
  both.

Introduced in notebook ``07_failure_modes`` (partial loads) and ``08_review`` (export).
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import save
from torch import nn

from .errors import CheckpointNotFoundError, CkptlabError, IncompatibleCheckpointError
from .reader import (
    CheckpointInfo,
    Stateful,
    latest_valid_checkpoint,
    load_checkpoint_state,
    restore_components,
)
from .sharded import is_sharded
from .writer import CheckpointWriteError, describe_os_error, fsync_dir


@dataclass
class LoadReport:
    """What a partial load did."""

    source: Path
    loaded: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, why)

    def __str__(self) -> str:
        lines = [f"from {self.source}: loaded {len(self.loaded)}, skipped {len(self.skipped)}"]
        lines += [f"  loaded   {name}" for name in self.loaded]
        lines += [f"  skipped  {name}: {why}" for name, why in self.skipped]
        return "\n".join(lines)


def load_components(checkpoint: str | os.PathLike[str], into: Mapping[str, Stateful],
                    keys: Iterable[str] | None = None) -> LoadReport:
    """Restore only the components named in ``keys`` (default: all of ``into``).

    ``checkpoint`` may be a checkpoint or a run directory (newest valid checkpoint).
    """
    info = latest_valid_checkpoint(checkpoint)
    wanted = list(into) if keys is None else list(keys)
    unknown = [k for k in wanted if k not in into]
    if unknown:
        raise CkptlabError(f"no object given to load {', '.join(unknown)} into")
    _, states = load_checkpoint_state(info.path, keys=wanted)
    restore_components({k: into[k] for k in wanted}, states, info.path)
    report = LoadReport(info.path, loaded=wanted)
    all_components = info.manifest.get("components", {})
    report.skipped = [(name, "not requested") for name in all_components if name not in wanted]
    return report


def _subtree(state: Any, component: str, path: str, source: Path) -> Mapping[str, Any]:
    node, walked = state, component
    for part in filter(None, path.split("/")):
        if not isinstance(node, Mapping) or part not in node:
            there = ", ".join(map(str, node)) if isinstance(node, Mapping) else "no entries"
            raise CheckpointNotFoundError(
                f"{source} has no '{walked}/{part}'; '{walked}' contains: {there}")
        node, walked = node[part], f"{walked}/{part}"
    if not isinstance(node, Mapping):
        raise CheckpointNotFoundError(f"'{walked}' in {source} is not a set of named tensors")
    return node


def load_parameters(checkpoint: str | os.PathLike[str], module: nn.Module, *,
                    source: str, pattern: str = ".*") -> LoadReport:
    """Copy the parameters and buffers of ``module`` whose names match ``pattern`` from the
    tensors at ``source`` (``component/sub/path``) in ``checkpoint``.

    ``pattern`` must match a whole name (``re.fullmatch``: ``"layers\\.0\\..*"``, not
    ``"layers.0"``). Every name in ``module`` is either loaded or reported as skipped (no
    match, or absent in the checkpoint). Nothing is copied unless every matching tensor has
    the right shape.

    Raises:
        IncompatibleCheckpointError: a matching tensor's shape differs (the message names it).
        CheckpointNotFoundError: nothing matched (the message lists the names on both sides).
    """
    info = latest_valid_checkpoint(checkpoint)
    component, _, rest = source.partition("/")
    _, states = load_checkpoint_state(info.path, keys=[component])
    saved = _subtree(states[component], component, rest, info.path)
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise CkptlabError(f"pattern {pattern!r} is not a valid regular expression: {exc}") \
            from None
    report = LoadReport(info.path)
    targets = module.state_dict()
    plan = []
    for name, tensor in targets.items():
        if not regex.fullmatch(name):
            report.skipped.append((name, f"does not match {pattern!r}"))
        elif name not in saved:
            report.skipped.append((name, f"not in {source}"))
        elif tuple(saved[name].shape) != tuple(tensor.shape):
            raise IncompatibleCheckpointError(
                f"tensor '{name}' has shape {tuple(saved[name].shape)} in {info.path} "
                f"({source}) but {tuple(tensor.shape)} in the module; nothing was loaded")
        else:
            plan.append(name)
    if not plan:  # a pattern or source that matched nothing is a mistake, not a no-op
        def some(names: list[str]) -> str:
            return ", ".join(names[:8]) + (", ..." if len(names) > 8 else "") or "nothing"

        raise CheckpointNotFoundError(
            f"nothing to load: no name of the module both matches {pattern!r} (the whole name "
            f"must match) and is a tensor at '{source}' in {info.path}. The module has: "
            f"{some(list(targets))}; '{source}' has: {some(list(saved))}")
    with torch.no_grad():
        for name in plan:
            targets[name].copy_(saved[name])
    report.loaded = plan
    return report


ExportWhat = Literal["weights", "metadata", "both"]


def _publish(out: Path, name: str, data: bytes) -> Path:
    """Write ``out/name`` all at once or not at all, never replacing an existing file.

    The bytes go to a temporary file first (fsynced), which is then hard-linked to its name
    (linking fails if the name exists, so nothing is overwritten even by a racing writer); a
    kill at any moment leaves either no file or the whole file, never a torn or empty one.
    """
    final = out / name
    temp = out / f".tmp-export-{uuid.uuid4().hex[:8]}-{name}"
    try:
        with open(temp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(temp, final)
        except FileExistsError:
            raise CkptlabError(f"{final} appeared while exporting; nothing was overwritten") \
                from None
        except OSError:  # a filesystem without hard links: check, then rename
            if final.exists():
                raise CkptlabError(f"{final} already exists; nothing was overwritten") from None
            os.replace(temp, final)
        fsync_dir(out)
    finally:
        temp.unlink(missing_ok=True)
    return final


def export_checkpoint(checkpoint: str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
                      source: str, what: ExportWhat = "both") -> list[Path]:
    """Export ``source`` tensors as ``weights.safetensors`` and/or ``metadata.json``.

    The weights file holds plain ``state_dict`` names (``layers.0.weight``, ...) so that::

        from safetensors.torch import load_file
        model.load_state_dict(load_file("weights.safetensors"))

    works in any PyTorch program. Its safetensors metadata names the source checkpoint. Existing
    files are never overwritten, and each file appears whole or not at all (a kill mid-export
    leaves no empty or torn file behind).

    Raises:
        CheckpointWriteError: the output place cannot be written (read-only, full).
    """
    if what not in ("weights", "metadata", "both"):
        raise CkptlabError(f"what must be weights, metadata or both (got {what!r})")
    info: CheckpointInfo = latest_valid_checkpoint(checkpoint)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise CkptlabError(f"--out {out} exists and is not a directory")
    targets = {"weights": ["weights.safetensors"], "metadata": ["metadata.json"],
               "both": ["weights.safetensors", "metadata.json"]}[what]
    clashes = [name for name in targets if (out / name).exists()]
    if clashes:
        raise CkptlabError(f"{out} already contains {', '.join(clashes)}; choose an empty "
                           "output directory (nothing was overwritten)")
    tensors: dict[str, torch.Tensor] = {}
    if what in ("weights", "both") and is_sharded(info.manifest):
        # [sharded] consolidate the DCP shards (any world size) into full tensors
        from .distributed import load_dcp_tensors

        prefix = (info.manifest.get("dcp_aliases") or {}).get(source, source)
        tensors = {k: v.contiguous() for k, v in load_dcp_tensors(info.path, prefix).items()}
    elif what in ("weights", "both"):  # everything is checked before anything is written
        component, _, rest = source.partition("/")
        _, states = load_checkpoint_state(info.path, keys=[component])
        subtree = _subtree(states[component], component, rest, info.path)
        tensors = {k: v.contiguous() for k, v in subtree.items() if isinstance(v, torch.Tensor)}
        if not tensors:
            raise CheckpointNotFoundError(f"'{source}' in {info.path} holds no tensors")
    source_meta = {"source_checkpoint": str(info.path.resolve()), "source_step": str(info.step),
                   "source_manifest_sha256": str(info.manifest.get("manifest_sha256")),
                   "source_tensors": source}
    files: dict[str, bytes] = {}
    if tensors:
        files["weights.safetensors"] = save(tensors,
                                            metadata={"format": "ckptlab-export", **source_meta})
    if what in ("metadata", "both"):
        # Everything the manifest says about the state (whatever fields its writer added),
        # but not its file table and self-hash, which describe the checkpoint's own files.
        described = {k: v for k, v in info.manifest.items()
                     if k not in ("format", "format_version", "files", "manifest_sha256")}
        meta = {"format": "ckptlab-export", **source_meta, **described}
        files["metadata.json"] = json.dumps(meta, indent=1).encode("utf-8")
    try:
        created = [p for p in (out, *out.parents) if not p.exists()]
        out.mkdir(parents=True, exist_ok=True)
        # A folder made here must have a durable name before the files in it are published,
        # or a power cut after the export returned could lose it whole (found by the crash
        # explorer, workload `export`).
        for directory in reversed(created):
            fsync_dir(directory.parent)
        for leftover in out.glob(".tmp-export-*"):  # of a killed export: ours to remove
            leftover.unlink(missing_ok=True)
        written = [_publish(out, name, data) for name, data in files.items()]
    except OSError as exc:
        raise CheckpointWriteError(f"cannot write the export to {out}: "
                                   f"{describe_os_error(exc)}; nothing was overwritten") \
            from None
    return written
