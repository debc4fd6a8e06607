"""A SQLite index of every checkpoint under a root directory.

The manifests stay the source of truth: the catalog is rebuilt from them at any time
(:meth:`Catalog.rebuild`), so it can be deleted freely. It answers questions across runs at
once, for example "which checkpoint was best across all my runs"::

    python -m ckptlab ls runs/ --sort eval_return --top 5

Introduced in notebook ``06_retention_strategies``.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import CheckpointNotFoundError, CkptlabError
from .format import MANIFEST, read_manifest
from .location import store_location, store_protocol
from .reader import verify_checkpoint

DEFAULT_DB_NAME = ".ckptlab-catalog.sqlite"
_SCHEMA = """
CREATE TABLE checkpoints (
    path TEXT PRIMARY KEY,      -- checkpoint directory, relative to the root
    run TEXT NOT NULL,          -- run directory, relative to the root
    step INTEGER,
    created TEXT,
    size_bytes INTEGER,
    status TEXT NOT NULL,       -- 'valid', or what is wrong
    config TEXT,                -- the run configuration the manifest records (JSON), if any
    config_sha256 TEXT,
    parent TEXT,                -- the checkpoint this run was started from, if another run
    metrics TEXT NOT NULL       -- JSON object
);
CREATE INDEX checkpoints_run ON checkpoints(run, step);
"""


@dataclass(frozen=True)
class CatalogRow:
    """One checkpoint as the catalog knows it."""

    path: str
    run: str
    step: int | None
    created: str | None
    size_bytes: int | None
    status: str
    config: dict[str, Any] | None  # the run configuration recorded in the manifest
    parent: str | None
    metrics: dict[str, Any]


class Catalog:
    """Index of the checkpoints under ``root``, stored in ``db_path``.

    Args:
        root: the directory to scan (for example ``runs/``).
        db_path: where the SQLite file lives (default ``root/.ckptlab-catalog.sqlite``).
    """

    def __init__(self, root: str | os.PathLike[str],
                 db_path: str | os.PathLike[str] | None = None) -> None:
        # Set when the index could not be written (a read-only tree): kept in memory instead.
        self._memory: sqlite3.Connection | None = None
        self._remote = store_location(root)
        if self._remote is not None:  # [object store] indexed in memory: no file to write
            self.root = self._remote  # type: ignore[assignment]
            self.db_path = ":memory:"
            return
        self.root = Path(root)
        if not self.root.is_dir():
            raise CheckpointNotFoundError(f"{self.root} is not a directory")
        self.db_path = str(db_path) if db_path is not None else str(self.root / DEFAULT_DB_NAME)

    @property
    def in_memory(self) -> bool:
        """True when the index lives in memory because ``db_path`` could not be written."""
        return self._memory is not None

    def rebuild(self, verify: bool = False) -> int:
        """Re-read every manifest under the root into a fresh index; return the count.

        Without ``verify`` a checkpoint is 'valid' when its manifest passes its self-hash and
        every file has the recorded size; with ``verify`` every file's SHA-256 is checked too.
        """
        if self._remote is not None:  # [object store]
            rows = store_protocol().remote_catalog_rows(self._remote, verify)
            if rows:
                self._memory = sqlite3.connect(":memory:")
                self._fill(self._memory, rows)
            return len(rows)
        rows = [self._row(manifest.parent, verify) for manifest in self._manifests()]
        if not rows:
            return 0  # nothing to index: write nothing
        temp = self.db_path + ".tmp"
        try:
            if os.path.exists(temp):
                os.remove(temp)
            con = sqlite3.connect(temp)
            try:
                self._fill(con, rows)
            finally:
                con.close()
            os.replace(temp, self.db_path)  # readers never see a half-built index
            self._memory = None
        except (OSError, sqlite3.Error):
            # A read-only tree (or full disk): listing must still work, so index in memory.
            self._memory = sqlite3.connect(":memory:")
            self._fill(self._memory, rows)
        return len(rows)

    @staticmethod
    def _fill(con: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
        con.executescript(_SCHEMA)
        con.executemany("INSERT INTO checkpoints VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
        con.commit()

    def _manifests(self) -> list[Path]:
        found = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            # Skip unfinished or deleted checkpoints (.tmp-, .trash-, .replaced-).
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            if MANIFEST in filenames and re.match(r"step_\d+$", os.path.basename(dirpath)):
                found.append(Path(dirpath) / MANIFEST)
        return sorted(found)

    def _row(self, checkpoint: Path, verify: bool) -> tuple[Any, ...]:
        rel = checkpoint.relative_to(self.root)
        if checkpoint.is_symlink():
            return (str(rel), str(rel.parent), None, None, None,
                    "invalid: a symbolic link, not a checkpoint directory", None, None, None,
                    "{}")
        run_dir = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" \
            else checkpoint.parent
        run = str(run_dir.relative_to(self.root)) if run_dir != self.root else "."
        try:
            manifest = read_manifest(checkpoint)
        except CkptlabError as exc:
            return (str(rel), run, None, None, None, f"invalid: {exc}", None, None, None, "{}")
        status = "valid"
        try:
            if verify:
                verify_checkpoint(checkpoint)
            else:
                for name, entry in manifest["files"].items():
                    size = (checkpoint / name).stat().st_size
                    if size != entry["bytes"]:
                        raise CkptlabError(f"{name} has {size} bytes, manifest says "
                                           f"{entry['bytes']}")
        except (CkptlabError, OSError) as exc:
            status = f"invalid: {exc}"
        lineage = manifest.get("lineage") or {}
        parent_record = lineage.get("parent")
        parent = parent_record.get("path") if isinstance(parent_record, dict) else None
        parent = str(parent) if parent is not None else None
        config = manifest.get("config")
        size_bytes = sum(int(f["bytes"]) for f in manifest["files"].values())
        return (str(rel), run, manifest.get("step"), manifest.get("created"), size_bytes,
                status, json.dumps(config) if config is not None else None,
                manifest.get("config_sha256"), parent,
                json.dumps(manifest.get("metrics") or {}))

    def query(self, *, sort: str | None = None, ascending: bool = False,
              top: int | None = None, run: str | None = None,
              valid_only: bool = False) -> list[CatalogRow]:
        """Checkpoints, optionally filtered by run, sorted by ``step`` / ``size_bytes`` /
        ``created`` or any metric name (missing values last), at most ``top`` of them."""
        if self._memory is None and not os.path.exists(self.db_path) and self.rebuild() == 0:
            return []
        con = self._memory if self._memory is not None else sqlite3.connect(self.db_path)
        try:
            where, params = [], []
            if run is not None:
                where.append("run = ?")
                params.append(run)
            if valid_only:
                where.append("status = 'valid'")
            direction = "ASC" if ascending else "DESC"
            if sort is None:
                order = "run ASC, step ASC"
            elif sort in ("step", "size_bytes", "created"):
                order = f"{sort} IS NULL, {sort} {direction}"
            else:
                if not re.fullmatch(r"[A-Za-z0-9_.-]+", sort):
                    raise CkptlabError(f"cannot sort by {sort!r}: use a metric name")
                key = f"json_extract(metrics, '$.\"{sort}\"')"
                order = f"{key} IS NULL, {key} {direction}, run, step"
            sql = ("SELECT path, run, step, created, size_bytes, status, config, parent, metrics "
                   f"FROM checkpoints {'WHERE ' + ' AND '.join(where) if where else ''} "
                   f"ORDER BY {order}")
            if top is not None:
                sql += f" LIMIT {int(top)}"
            rows = con.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise CkptlabError(f"the index {self.db_path} cannot be read ({exc}); delete it "
                               "and list again (it is rebuilt from the manifests)") from None
        finally:
            if con is not self._memory:
                con.close()
        return [CatalogRow(*r[:6], json.loads(r[6]) if r[6] is not None else None, r[7],
                           json.loads(r[8])) for r in rows]

    def metric_names(self) -> list[str]:
        """Every metric name that appears in some checkpoint."""
        names: set[str] = set()
        for row in self.query():
            names.update(row.metrics)
        return sorted(names)
