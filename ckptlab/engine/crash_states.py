"""Crash states: every disk a power cut could leave behind while an engine operation runs.

A process killed with SIGKILL leaves the kernel's page cache behind, so everything it wrote
still reaches the disk: a save that forgot an fsync, or renamed before its data was durable,
passes every SIGKILL test. A power cut or an OS crash does not keep the page cache: writes not
yet made durable may be lost, in part, or in another order than they were made. This module
checks the engine's durability claims the way ALICE (Pillai et al., OSDI 2014) and CrashMonkey
(Mohan et al., OSDI 2018) do:

1. **Record** (:func:`record`): the operation runs for real in a scratch workspace while
   ``os`` (``open``, ``write``, ``writev``, ``pwrite``, ``ftruncate``, ``fsync``, ``fdatasync``,
   ``rename``, ``replace``, ``link``, ``symlink``, ``unlink``, ``mkdir``, ``rmdir``, ...), the
   builtin ``open`` / ``io.open`` (served by the pure-Python ``_pyio``, whose files write
   through ``os.write``) and ``sqlite3.connect`` are interposed. Every call under the workspace
   becomes an :class:`FsOp`, in the order its effect happened. Real fsyncs are skipped (their
   effect is what the model decides), and an fsync made on a pool thread completes only once
   someone waits for it, so a commit that does not wait is recorded before the fsync's end.
   Afterwards the workspace replayed from the recording must equal the real one, file by file:
   a write the interposition did not see (C code, ``mmap``) fails the recording loudly
   (:class:`UnrecordedWriteError`).
2. **Persistence model** (:data:`MODELS`): which of the recorded calls a crash after the first
   *k* of them may have left on disk.
3. **Construct** (:func:`states_at`): every crash state of every crash point *k*, as an
   in-memory disk; equal disks are checked once.
4. **Materialise and check** (:func:`explore`): each distinct disk is written to the
   workspace's own path (absolute paths recorded in files stay right) and a check - the
   engine's recovery and its invariants, :mod:`.crash_recovery` - runs on it.

What both persistence models assume
-----------------------------------
* The workspace as it was before the operation is durable.
* A completed ``fsync``/``fdatasync`` of a file makes the data written to it before the call
  began durable - not its name.
* A completed ``fsync`` of a directory makes the changes to its entries (create, mkdir, link,
  unlink, rmdir, rename) made before the call began durable. A rename changes two entries
  (maybe of two directories) and is durable once every directory it changes has been fsynced
  after it.
* A rename (``os.replace``) is atomic: after a crash the entry is at its old name or its new
  one, never both, never neither. An entry change that a later durable change of the same
  entry builds on is durable too.
* Inodes are allocated in memory; one whose name never reached the disk is invisible.

``ordered`` - ext4 ``data=ordered``-like
    Directory changes reach the disk in the order they were made (one journal): a crash keeps
    a prefix of them, at least up to the last durable one. A file's un-synced data persists in
    order too: a prefix of its writes, cut at 4 KiB page boundaries, at least up to its last
    completed fsync. Data and names are independent (delayed allocation: a renamed file may
    arrive empty). Stricter than real ext4: no credit for the journal commit a file fsync
    triggers, nor for ``auto_da_alloc``'s flush on rename.

``adversarial`` - any un-synced write may be lost or reordered
    Each directory entry's changes persist in order, but different entries' changes
    independently of each other (a crash keeps any set of them closed under that order). Each
    4 KiB page of un-synced file data persists or not independently of every other; a lost
    page inside the file reads as zeros.

Fault switches (:class:`Fault`) remove one fsync from a recording, or move a rename before an
fsync completes, to show the explorer finds what such a bug breaks. They act on the recording
only; nothing in the engine's own code paths knows about them.

Introduced in notebook ``07_failure_modes`` (what SIGKILL cannot test); see
``docs/crash-consistency.md``.
"""

from __future__ import annotations

import _pyio
import builtins
import concurrent.futures.thread
import fnmatch
import hashlib
import io
import itertools
import os
import shutil
import sqlite3
import stat
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CkptlabError

PAGE = 4096
"""Bytes per page: the unit in which un-synced file data persists or is lost."""

MODELS = ("ordered", "adversarial")
"""The persistence models (see the module documentation)."""

# Directory-entry changes, and changes to a file's bytes.
NAMESPACE_KINDS = frozenset({"create", "mkdir", "symlink", "link", "rename", "unlink", "rmdir"})
DATA_KINDS = frozenset({"write", "truncate"})

# More crash states than this at one crash point means the workload is too large to explore
# exhaustively: the explorer refuses rather than sampling (bound the workload, not the states).
MAX_STATES_PER_POINT = 50_000


class CrashExplorerError(CkptlabError):
    """The explorer cannot model what happened (a call it does not interpose, a workload too
    large to explore exhaustively, a bad argument)."""


class UnrecordedWriteError(CrashExplorerError):
    """The operation changed the workspace through a call the recorder did not see."""


# -- the recording -----------------------------------------------------------------------------

@dataclass(frozen=True)
class FsOp:
    """One recorded file-system call.

    ``inode`` is the model's id of the file or directory acted on (written, synced, created,
    renamed, removed); namespace calls also name the directory entry they change:
    ``(parent, name)`` and, for ``rename`` and ``link``, ``(dst_parent, dst_name)``.
    """

    id: int                      # its position in the original recording (stable)
    kind: str                    # create mkdir symlink link rename unlink rmdir write truncate
    #                              fsync
    path: str                    # workspace-relative path, for people
    inode: int
    parent: int = -1
    name: str = ""
    dst_parent: int = -1
    dst_name: str = ""
    dst_path: str = ""
    offset: int = 0              # write
    data: bytes = b""            # write: the bytes; symlink: the target
    size: int = 0                # truncate: the new size
    is_dir: bool = False         # fsync of a directory; mkdir; rmdir
    covers: frozenset[int] = frozenset()  # fsync: ids of the calls it makes durable
    thread: str = ""

    @property
    def namespace(self) -> bool:
        return self.kind in NAMESPACE_KINDS

    def entries(self) -> tuple[tuple[int, str], ...]:
        """The directory entries a namespace call changes."""
        if self.kind == "rename":
            return ((self.parent, self.name), (self.dst_parent, self.dst_name))
        if self.kind == "link":
            return ((self.dst_parent, self.dst_name),)
        return ((self.parent, self.name),)

    def directories(self) -> frozenset[int]:
        """The directories whose fsync this namespace call needs to be durable."""
        return frozenset(parent for parent, _ in self.entries())

    def describe(self) -> str:
        """One short line: ``rename .tmp-step_00000003-1a2b3c4d -> step_00000003``."""
        if self.kind == "write":
            return f"write {self.path} [{self.offset}, {self.offset + len(self.data)})"
        if self.kind == "truncate":
            return f"truncate {self.path} to {self.size} bytes"
        if self.kind == "fsync":
            return f"fsync {self.path or '.'}{'/' if self.is_dir else ''}"
        if self.kind == "rename":
            return f"rename {self.path} -> {self.dst_path}"
        if self.kind == "link":
            return f"link {self.path} -> {self.dst_path}"
        return f"{self.kind} {self.path}"


class _Node:
    """An inode of the in-memory disk: a directory's entries, a file's bytes, a link target."""

    __slots__ = ("kind", "data", "entries")

    def __init__(self, kind: str, data: bytes = b"",
                 entries: dict[str, int] | None = None) -> None:
        self.kind, self.data = kind, data
        self.entries = entries if entries is not None else ({} if kind == "dir" else None)


Image = dict[int, _Node]
"""An in-memory disk: inode id -> node; inode 0 is the workspace directory."""

Tree = dict[str, tuple[str, bytes]]
"""A disk as seen from the workspace: relative path -> ``("dir", b"")``, ``("file", bytes)``
or ``("symlink", target)``."""


@dataclass(frozen=True)
class Fault:
    """An injected durability bug, applied to the recording only (never to engine code).

    Attributes:
        drop_fsync: a glob on the workspace-relative path of a file or directory: the first
            fsync of a matching path is not recorded, as if that line were removed.
        rename_before_fsync: ``(rename_glob, fsync_glob)``: the first rename whose destination
            matches is moved to just before the completion of the first fsync of a path
            matching ``fsync_glob`` (a commit that does not wait for the data to be durable).
    """

    drop_fsync: str | None = None
    rename_before_fsync: tuple[str, str] | None = None

    def describe(self) -> str:
        if self.drop_fsync is not None:
            return f"fsync of {self.drop_fsync} removed"
        if self.rename_before_fsync is not None:
            target, anchor = self.rename_before_fsync
            return f"rename to {target} moved before the fsync of {anchor} completes"
        return "none"


@dataclass
class Recording:
    """What one operation did to the workspace.

    Attributes:
        workspace: where it ran (states are materialised at this same path).
        ops: the calls, in the order their effects happened.
        before: the workspace before the operation (taken as durable).
        after: the workspace after it (every call applied; equals the real one).
        outside: changes outside the paths the operation was allowed to touch.
        fault: the injected bug, if any.
    """

    workspace: Path
    ops: list[FsOp]
    initial: Image
    before: Tree
    after: Tree
    outside: list[str] = field(default_factory=list)
    fault: Fault | None = None

    def timeline(self) -> list[str]:
        """Each call as one line, numbered from 1 (crash point *k* is "after line *k*")."""
        return [f"{i + 1:3d}  {op.describe()}" for i, op in enumerate(self.ops)]


_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | getattr(os, "O_APPEND", 0)


class _Fd:
    __slots__ = ("inode", "rel", "absolute", "is_dir")

    def __init__(self, inode: int, rel: str, absolute: str, is_dir: bool) -> None:
        self.inode, self.rel, self.absolute, self.is_dir = inode, rel, absolute, is_dir


def _current_future() -> concurrent.futures.Future[Any] | None:
    """The future of the thread-pool work item running this call, if any."""
    frame = sys._getframe(2)
    while frame is not None:
        owner = frame.f_locals.get("self") if frame.f_code.co_name == "run" else None
        if isinstance(owner, concurrent.futures.thread._WorkItem):
            return owner.future
        frame = frame.f_back
    return None


def _awaited(future: concurrent.futures.Future[Any]) -> bool:
    """True once some thread waits for ``future`` (``result()`` or ``futures.wait``)."""
    return bool(getattr(future, "_waiters", None)) or \
        bool(getattr(getattr(future, "_condition", None), "_waiters", None))


class _Recorder:
    """Interposes on ``os``, ``open`` and ``sqlite3.connect`` while an operation runs."""

    def __init__(self, workspace: Path, allowed: Callable[[str], bool],
                 fault: Fault | None) -> None:
        self.root = os.path.realpath(workspace)
        self.allowed, self.fault = allowed, fault
        self.lock = threading.RLock()
        self.ops: list[FsOp] = []
        self.keys: dict[tuple[int, int], int] = {}   # live (st_dev, st_ino) -> inode id
        self.fds: dict[int, _Fd] = {}
        self.data_ops: dict[int, list[int]] = {}     # file inode -> ids of its data calls
        self.ns_ops: dict[int, list[int]] = {}       # directory -> ids of its entry changes
        self.outside: list[str] = []
        self.dropped = False
        self.pending: dict[tuple[int, str, int], concurrent.futures.Future[Any]] = {}
        self.tickets = itertools.count()
        self.stopping = False
        self.saved: dict[tuple[Any, str], Any] = {}
        self.initial, self.keys = self._snapshot()
        self.current: Image = {i: _copy_node(n) for i, n in self.initial.items()}
        self.next_id = max(self.initial) + 1

    # -- snapshot and bookkeeping ---------------------------------------------------------
    def _snapshot(self) -> tuple[Image, dict[tuple[int, int], int]]:
        """The workspace as it is now: ``(image, live key -> inode id)``."""
        image: Image = {}
        seen: dict[tuple[int, int], int] = {}
        ids = itertools.count()

        def visit(path: str) -> int:
            st = os.lstat(path)
            key = (st.st_dev, st.st_ino)
            if key in seen:  # a hard link to a file already visited
                return seen[key]
            inode = seen[key] = next(ids)
            if stat.S_ISDIR(st.st_mode):
                node = image[inode] = _Node("dir")
                with os.scandir(path) as listing:
                    names = sorted(entry.name for entry in listing)
                for name in names:
                    node.entries[name] = visit(os.path.join(path, name))  # type: ignore[index]
            elif stat.S_ISLNK(st.st_mode):
                image[inode] = _Node("symlink", os.fsencode(os.readlink(path)))
            elif stat.S_ISREG(st.st_mode):
                with builtins.open(path, "rb") as f:
                    image[inode] = _Node("file", f.read())
            else:
                raise CrashExplorerError(f"{path}: only files, directories and symbolic links "
                                         "can be modelled")
            return inode

        visit(self.root)
        return image, seen

    def _absolute(self, path: Any, dir_fd: int | None = None) -> str:
        text = os.fsdecode(path)
        if dir_fd is not None and not os.path.isabs(text):
            held = self.fds.get(dir_fd)
            base = held.absolute if held is not None else f"/proc/self/fd/{dir_fd}"
        else:
            base = os.getcwd()
        joined = os.path.normpath(os.path.join(base, text))
        head, tail = os.path.split(joined)
        return os.path.join(os.path.realpath(head), tail) if tail else os.path.realpath(head)

    def _relative(self, absolute: str) -> str | None:
        if absolute == self.root:
            return ""
        if absolute.startswith(self.root + os.sep):
            return absolute[len(self.root) + 1:]
        return None

    def _inode_at(self, absolute: str) -> int:
        st = os.lstat(absolute)
        inode = self.keys.get((st.st_dev, st.st_ino))
        if inode is None:
            raise UnrecordedWriteError(
                f"{absolute} appeared without a recorded call (written by C code?); the "
                "explorer cannot model it")
        return inode

    def _last_link(self, absolute: str) -> tuple[int, int] | None:
        """The live key of the file or directory at ``absolute`` if removing this name frees
        it (its inode number may then be reused for a new file)."""
        try:
            st = os.lstat(absolute)
        except FileNotFoundError:
            return None
        return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) or st.st_nlink <= 1 else None

    def _forget(self, key: tuple[int, int] | None) -> None:
        if key is not None:
            self.keys.pop(key, None)

    def _new_inode(self, absolute: str, kind: str, data: bytes = b"") -> int:
        st = os.lstat(absolute)
        inode = self.next_id
        self.next_id += 1
        self.keys[(st.st_dev, st.st_ino)] = inode
        self.current[inode] = _Node(kind, data)
        return inode

    def _check_allowed(self, what: str, rel: str | None, absolute: str) -> None:
        if rel is None:
            self.outside.append(f"{what} {absolute} (outside the workspace, thread "
                                f"{threading.current_thread().name})")
        elif not self.allowed(rel):
            self.outside.append(f"{what} {rel}")

    def _append(self, kind: str, path: str, inode: int, **fields: Any) -> FsOp:
        op = FsOp(len(self.ops), kind, path, inode, thread=threading.current_thread().name,
                  **fields)
        self.ops.append(op)
        if op.namespace:
            for directory in op.directories():
                self.ns_ops.setdefault(directory, []).append(op.id)
        elif kind in DATA_KINDS:
            self.data_ops.setdefault(inode, []).append(op.id)
        _apply(self.current, op, op.offset, op.data)
        return op

    # -- interposed os functions ------------------------------------------------------------
    def os_open(self, path: Any, flags: int, mode: int = 0o777, *,
                dir_fd: int | None = None) -> int:
        real = self.saved[(os, "open")]
        absolute = self._absolute(path, dir_fd)
        rel = self._relative(absolute)
        if rel is None:
            if flags & _WRITE_FLAGS:
                self._check_allowed("open for writing", None, absolute)
            return real(path, flags, mode, dir_fd=dir_fd)
        with self.lock:
            try:
                before = os.lstat(absolute)
            except FileNotFoundError:
                before = None
            fd = real(path, flags, mode, dir_fd=dir_fd)
            st = os.fstat(fd)
            is_dir = stat.S_ISDIR(st.st_mode)
            writable = flags & (os.O_WRONLY | os.O_RDWR)
            if before is None:
                self._check_allowed("create", rel, absolute)
                inode = self._new_inode(absolute, "file")
                head, tail = os.path.split(absolute)
                self._append("create", rel, inode, parent=self._inode_at(head), name=tail)
            else:
                inode = self._inode_at(absolute)
                if flags & os.O_TRUNC and writable and before.st_size:
                    self._check_allowed("truncate", rel, absolute)
                    self._append("truncate", rel, inode, size=0)
            if is_dir or writable:
                self.fds[fd] = _Fd(inode, rel, absolute, is_dir)
            return fd

    def os_close(self, fd: int) -> None:
        with self.lock:
            self.saved[(os, "close")](fd)
            self.fds.pop(fd, None)

    def _record_write(self, fd: int, written: int, data: bytes, offset: int | None) -> None:
        held = self.fds[fd]
        if offset is None:
            offset = os.lseek(fd, 0, os.SEEK_CUR) - written
        self._append("write", held.rel, held.inode, offset=offset, data=data[:written])

    def os_write(self, fd: int, data: Any) -> int:
        if fd not in self.fds:
            return self.saved[(os, "write")](fd, data)
        with self.lock:
            written = self.saved[(os, "write")](fd, data)
            self._record_write(fd, written, _as_bytes(data), None)
            return written

    def os_writev(self, fd: int, buffers: Sequence[Any]) -> int:
        if fd not in self.fds:
            return self.saved[(os, "writev")](fd, buffers)
        with self.lock:
            written = self.saved[(os, "writev")](fd, buffers)
            self._record_write(fd, written, b"".join(_as_bytes(b) for b in buffers), None)
            return written

    def os_pwrite(self, fd: int, data: Any, offset: int) -> int:
        if fd not in self.fds:
            return self.saved[(os, "pwrite")](fd, data, offset)
        with self.lock:
            written = self.saved[(os, "pwrite")](fd, data, offset)
            self._record_write(fd, written, _as_bytes(data), offset)
            return written

    def os_pwritev(self, fd: int, buffers: Sequence[Any], offset: int, *flags: int) -> int:
        if fd not in self.fds:
            return self.saved[(os, "pwritev")](fd, buffers, offset, *flags)
        with self.lock:
            written = self.saved[(os, "pwritev")](fd, buffers, offset, *flags)
            self._record_write(fd, written, b"".join(_as_bytes(b) for b in buffers), offset)
            return written

    def os_ftruncate(self, fd: int, length: int) -> None:
        if fd not in self.fds:
            return self.saved[(os, "ftruncate")](fd, length)
        with self.lock:
            self.saved[(os, "ftruncate")](fd, length)
            held = self.fds[fd]
            self._append("truncate", held.rel, held.inode, size=length)
        return None

    def os_truncate(self, path: Any, length: int) -> None:
        if isinstance(path, int):
            return self.os_ftruncate(path, length)
        absolute = self._absolute(path)
        rel = self._relative(absolute)
        if rel is None:
            self._check_allowed("truncate", None, absolute)
            return self.saved[(os, "truncate")](path, length)
        with self.lock:
            self._check_allowed("truncate", rel, absolute)
            self.saved[(os, "truncate")](path, length)
            self._append("truncate", rel, self._inode_at(absolute), size=length)
        return None

    def os_fsync(self, fd: Any) -> None:
        self._sync(fd, "fsync")

    def os_fdatasync(self, fd: Any) -> None:
        self._sync(fd, "fdatasync")

    def _sync(self, fd: Any, name: str) -> None:
        fd = fd if isinstance(fd, int) else fd.fileno()
        held = self.fds.get(fd)
        if held is None:
            return self.saved[(os, name)](fd)
        with self.lock:
            if (self.fault is not None and self.fault.drop_fsync is not None
                    and not self.dropped and fnmatch.fnmatch(held.rel, self.fault.drop_fsync)):
                self.dropped = True  # the injected bug: this fsync never happens
                return None
            covers = frozenset(self.ns_ops.get(held.inode, ()) if held.is_dir
                               else self.data_ops.get(held.inode, ()))
            # fsyncs released together complete in the order of what they cover (as the
            # thread pool's start order varies from run to run, this keeps recordings alike)
            ticket = (max(covers, default=-1), held.rel, next(self.tickets))
            future = _current_future()
            if future is not None:
                self.pending[ticket] = future
        if future is not None:
            self._wait_until_awaited(ticket, future)
        with self.lock:
            self.pending.pop(ticket, None)
            self._append("fsync", held.rel, held.inode, is_dir=held.is_dir, covers=covers)
        return None

    def _wait_until_awaited(self, ticket: tuple[int, str, int],
                            future: concurrent.futures.Future[Any]) -> None:
        """Hold an fsync made on a pool thread until someone waits for it (the slowest disk
        the caller could meet); several released together complete in ``ticket`` order."""
        deadline = time.monotonic() + 30.0
        eligible_since = None
        while time.monotonic() < deadline:
            with self.lock:
                if self.stopping or _awaited(future):
                    now = time.monotonic()
                    eligible_since = eligible_since or now
                    earlier = [t for t, f in self.pending.items()
                               if t < ticket and (self.stopping or _awaited(f))]
                    # (a moment's grace lets the other fsyncs of the same wait register)
                    if not earlier and now - eligible_since >= 0.002:
                        return
            time.sleep(0.0005)
        warnings.warn("an fsync waited 30 s for a waiter and completed anyway", stacklevel=2)

    def _rename(self, which: str, src: Any, dst: Any, *, src_dir_fd: int | None = None,
                dst_dir_fd: int | None = None) -> None:
        real = self.saved[(os, which)]
        a_src, a_dst = self._absolute(src, src_dir_fd), self._absolute(dst, dst_dir_fd)
        r_src, r_dst = self._relative(a_src), self._relative(a_dst)
        if r_src is None and r_dst is None:
            self._check_allowed(which, None, a_dst)
            return real(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
        if r_src is None or r_dst is None:
            raise CrashExplorerError(f"{which} {a_src} -> {a_dst} crosses the workspace's "
                                     "edge; the explorer cannot model it")
        with self.lock:
            self._check_allowed(which, r_src, a_src)
            self._check_allowed(which, r_dst, a_dst)
            moved = self._inode_at(a_src)
            gone = self._last_link(a_dst)
            real(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
            self._forget(gone)
            (s_head, s_tail), (d_head, d_tail) = os.path.split(a_src), os.path.split(a_dst)
            self._append("rename", r_src, moved, parent=self._inode_at(s_head), name=s_tail,
                         dst_parent=self._inode_at(d_head), dst_name=d_tail, dst_path=r_dst)
        return None

    def os_rename(self, src: Any, dst: Any, **kwargs: Any) -> None:
        self._rename("rename", src, dst, **kwargs)

    def os_replace(self, src: Any, dst: Any, **kwargs: Any) -> None:
        self._rename("replace", src, dst, **kwargs)

    def os_link(self, src: Any, dst: Any, *, src_dir_fd: int | None = None,
                dst_dir_fd: int | None = None, follow_symlinks: bool = True) -> None:
        real = self.saved[(os, "link")]
        a_src, a_dst = self._absolute(src, src_dir_fd), self._absolute(dst, dst_dir_fd)
        r_src, r_dst = self._relative(a_src), self._relative(a_dst)
        if r_dst is None:
            self._check_allowed("link", None, a_dst)
            return real(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd,
                        follow_symlinks=follow_symlinks)
        if r_src is None:
            raise CrashExplorerError(f"link {a_src} -> {a_dst} crosses the workspace's edge")
        with self.lock:
            self._check_allowed("link", r_dst, a_dst)
            inode = self._inode_at(a_src)
            real(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd,
                 follow_symlinks=follow_symlinks)
            head, tail = os.path.split(a_dst)
            self._append("link", r_src, inode, dst_parent=self._inode_at(head), dst_name=tail,
                         dst_path=r_dst)
        return None

    def os_symlink(self, target: Any, dst: Any, target_is_directory: bool = False, *,
                   dir_fd: int | None = None) -> None:
        real = self.saved[(os, "symlink")]
        absolute = self._absolute(dst, dir_fd)
        rel = self._relative(absolute)
        if rel is None:
            self._check_allowed("symlink", None, absolute)
            return real(target, dst, target_is_directory, dir_fd=dir_fd)
        with self.lock:
            self._check_allowed("symlink", rel, absolute)
            real(target, dst, target_is_directory, dir_fd=dir_fd)
            data = os.fsencode(target)
            inode = self._new_inode(absolute, "symlink", data)
            head, tail = os.path.split(absolute)
            self._append("symlink", rel, inode, parent=self._inode_at(head), name=tail,
                         data=data)
        return None

    def _remove(self, which: str, kind: str, path: Any, dir_fd: int | None) -> None:
        real = self.saved[(os, which)]
        absolute = self._absolute(path, dir_fd)
        rel = self._relative(absolute)
        if rel is None:
            self._check_allowed(which, None, absolute)
            return real(path, dir_fd=dir_fd)
        with self.lock:
            self._check_allowed(which, rel, absolute)
            inode = self._inode_at(absolute) if os.path.lexists(absolute) else -1
            gone = self._last_link(absolute)
            real(path, dir_fd=dir_fd)
            self._forget(gone)
            head, tail = os.path.split(absolute)
            self._append(kind, rel, inode, parent=self._inode_at(head), name=tail,
                         is_dir=kind == "rmdir")
        return None

    def os_unlink(self, path: Any, *, dir_fd: int | None = None) -> None:
        self._remove("unlink", "unlink", path, dir_fd)

    def os_remove(self, path: Any, *, dir_fd: int | None = None) -> None:
        self._remove("remove", "unlink", path, dir_fd)

    def os_rmdir(self, path: Any, *, dir_fd: int | None = None) -> None:
        self._remove("rmdir", "rmdir", path, dir_fd)

    def os_mkdir(self, path: Any, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
        real = self.saved[(os, "mkdir")]
        absolute = self._absolute(path, dir_fd)
        rel = self._relative(absolute)
        if rel is None:
            self._check_allowed("mkdir", None, absolute)
            return real(path, mode, dir_fd=dir_fd)
        with self.lock:
            real(path, mode, dir_fd=dir_fd)
            self._check_allowed("mkdir", rel, absolute)
            inode = self._new_inode(absolute, "dir")
            head, tail = os.path.split(absolute)
            self._append("mkdir", rel, inode, parent=self._inode_at(head), name=tail,
                         is_dir=True)
        return None

    def unsupported(self, name: str) -> Callable[..., Any]:
        real = self.saved[(os, name)]

        def call(*args: Any, **kwargs: Any) -> Any:
            fds = [a for a in args if isinstance(a, int)]
            if any(fd in self.fds for fd in fds):
                raise CrashExplorerError(f"os.{name} on a file in the workspace is not "
                                         "modelled by the crash explorer")
            return real(*args, **kwargs)

        return call

    # -- open() and sqlite3 -----------------------------------------------------------------
    def open(self, file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if any(c in mode for c in "wax+"):
            return _pyio.open(file, mode, *args, **kwargs)  # writes go through os.write
        return self.saved[(builtins, "open")](file, mode, *args, **kwargs)

    def connect(self, database: Any, *args: Any, **kwargs: Any) -> Any:
        real = self.saved[(sqlite3, "connect")]
        if not isinstance(database, (str, bytes, os.PathLike)) or \
                os.fsdecode(database) == ":memory:" or os.fsdecode(database).startswith("file:"):
            return real(database, *args, **kwargs)
        absolute = self._absolute(database)
        rel = self._relative(absolute)
        if rel is None:
            self._check_allowed("sqlite3.connect", None, absolute)
            return real(database, *args, **kwargs)
        return _RecordedConnection(real(database, *args, **kwargs), self, absolute, rel)

    def adopt_sqlite(self, absolute: str, rel: str, synchronous: bool) -> None:
        """Record what a closed SQLite connection left in its file: SQLite's transactions
        are taken as atomic, and (with ``PRAGMA synchronous`` on, as SQLite does at commit)
        durable when it returns; SQLite's own journal protocol is SQLite's to test."""
        with self.lock:
            if not os.path.lexists(absolute):
                return
            with self.saved[(builtins, "open")](absolute, "rb") as f:
                content = f.read()
            inode = _lookup(self.current, rel)
            if inode is None:  # created by SQLite's C code: the model learns of it now
                self._check_allowed("sqlite3 create", rel, absolute)
                inode = self._new_inode(absolute, "file")
                head, tail = os.path.split(absolute)
                self._append("create", rel, inode, parent=self._inode_at(head), name=tail)
            elif self.current[inode].data == content:
                return
            self._check_allowed("sqlite3 write", rel, absolute)
            self._append("truncate", rel, inode, size=0)
            self._append("write", rel, inode, offset=0, data=content)
            if synchronous:
                self._append("fsync", rel, inode,
                             covers=frozenset(self.data_ops.get(inode, ())))

    # -- patching ---------------------------------------------------------------------------
    def install(self) -> None:
        patches: list[tuple[Any, str, Any]] = [
            (os, "open", self.os_open), (os, "close", self.os_close),
            (os, "write", self.os_write), (os, "fsync", self.os_fsync),
            (os, "ftruncate", self.os_ftruncate), (os, "truncate", self.os_truncate),
            (os, "rename", self.os_rename), (os, "replace", self.os_replace),
            (os, "link", self.os_link), (os, "symlink", self.os_symlink),
            (os, "unlink", self.os_unlink), (os, "remove", self.os_remove),
            (os, "rmdir", self.os_rmdir), (os, "mkdir", self.os_mkdir),
            (builtins, "open", self.open), (io, "open", self.open),
            (sqlite3, "connect", self.connect)]
        for name, method in (("writev", self.os_writev), ("pwrite", self.os_pwrite),
                             ("pwritev", self.os_pwritev), ("fdatasync", self.os_fdatasync)):
            if hasattr(os, name):
                patches.append((os, name, method))
        for name in ("sendfile", "copy_file_range", "splice", "posix_fallocate"):
            if hasattr(os, name):
                self.saved[(os, name)] = getattr(os, name)
                patches.append((os, name, self.unsupported(name)))
        for module, name, replacement in patches:
            self.saved.setdefault((module, name), getattr(module, name))
        for module, name, replacement in patches:
            setattr(module, name, replacement)

    def uninstall(self) -> None:
        for (module, name), original in self.saved.items():
            setattr(module, name, original)

    def finish(self) -> None:
        """Let held fsyncs complete (in the order they began) before the patches go."""
        with self.lock:
            self.stopping = True
        deadline = time.monotonic() + 30.0
        while self.pending and time.monotonic() < deadline:
            time.sleep(0.001)


class _RecordedConnection:
    """A ``sqlite3.Connection`` whose file is recorded when it is closed."""

    def __init__(self, connection: sqlite3.Connection, recorder: _Recorder, absolute: str,
                 rel: str) -> None:
        self._connection, self._recorder = connection, recorder
        self._absolute, self._rel = absolute, rel

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)

    def __enter__(self) -> Any:
        self._connection.__enter__()
        return self

    def __exit__(self, *exc: Any) -> Any:
        return self._connection.__exit__(*exc)

    def close(self) -> None:
        synchronous = self._connection.execute("PRAGMA synchronous").fetchone()[0]
        self._connection.close()
        self._recorder.adopt_sqlite(self._absolute, self._rel, bool(synchronous))


def _as_bytes(data: Any) -> bytes:
    return bytes(memoryview(data).cast("B"))


def _copy_node(node: _Node) -> _Node:
    return _Node(node.kind, node.data, dict(node.entries) if node.entries is not None else None)


def record(workspace: str | os.PathLike[str], operation: Callable[[], Any], *,
           allowed: Sequence[str] | Callable[[str], bool] = ("",),
           fault: Fault | None = None) -> Recording:
    """Run ``operation`` with the file-system calls under ``workspace`` recorded.

    Args:
        workspace: an existing directory holding everything the operation reads and writes.
        operation: called with no arguments; its result is ignored, its errors propagate.
        allowed: workspace-relative path prefixes the operation may change (a change elsewhere,
            inside the workspace or out of it, is listed in :attr:`Recording.outside`), or a
            predicate on the relative path.
        fault: an injected durability bug (see :class:`Fault`).

    Raises:
        UnrecordedWriteError: the workspace changed in a way no recorded call explains.

    Not safe to run while other threads of this process write files under ``workspace``
    for other reasons; calls elsewhere pass through unrecorded.
    """
    workspace = Path(workspace)
    if not workspace.is_dir():
        raise CrashExplorerError(f"{workspace} is not a directory")
    check = allowed if callable(allowed) else _prefix_predicate(allowed)
    recorder = _Recorder(workspace, check, fault)
    recorder.install()
    try:
        operation()
    finally:
        try:
            recorder.finish()
        finally:
            recorder.uninstall()
    before = _tree(recorder.initial)
    after = _tree(recorder.current)
    real = _tree(recorder._snapshot()[0])
    if after != real:
        wrong = sorted(p for p in set(after) | set(real) if after.get(p) != real.get(p))
        raise UnrecordedWriteError(
            f"the workspace changed without a recorded call at {', '.join(wrong[:5])}"
            f"{' ...' if len(wrong) > 5 else ''} (C code, mmap, sendfile?): the explorer "
            "cannot model it")
    ops = recorder.ops
    if fault is not None and fault.drop_fsync is not None and not recorder.dropped:
        raise CrashExplorerError(f"fault {fault.describe()}: no fsync of a path matching "
                                 f"{fault.drop_fsync!r} happened")
    if fault is not None and fault.rename_before_fsync is not None:
        ops = _move_rename(ops, *fault.rename_before_fsync)
    return Recording(workspace, ops, recorder.initial, before, after,
                     list(dict.fromkeys(recorder.outside)), fault)


def _prefix_predicate(prefixes: Sequence[str]) -> Callable[[str], bool]:
    def allowed(rel: str) -> bool:
        for prefix in prefixes:
            if prefix.endswith("*"):
                if rel.startswith(prefix[:-1]):
                    return True
                continue
            directory = prefix.rstrip("/")
            if directory == "" or rel == directory or rel.startswith(directory + "/"):
                return True
        return False
    return allowed


def _move_rename(ops: list[FsOp], target: str, anchor: str) -> list[FsOp]:
    """The fault ``rename_before_fsync``: the rename moved to just before the fsync."""
    rename = next((op for op in ops if op.kind == "rename"
                   and fnmatch.fnmatch(op.dst_path, target)), None)
    sync = next((op for op in ops if op.kind == "fsync" and fnmatch.fnmatch(op.path, anchor)),
                None)
    if rename is None or sync is None:
        raise CrashExplorerError(f"fault rename_before_fsync: no rename to {target!r} or no "
                                 f"fsync of {anchor!r} in the recording")
    if ops.index(rename) < ops.index(sync):
        raise CrashExplorerError("fault rename_before_fsync: the rename already comes first")
    moved = [op for op in ops if op is not rename]
    moved.insert(moved.index(sync), rename)
    return moved


# -- the in-memory disk --------------------------------------------------------------------------

def _apply(image: Image, op: FsOp, offset: int, data: bytes) -> None:
    """Apply ``op`` (for a write: the piece ``data`` at ``offset``) to ``image`` in place.

    The nodes changed are replaced, never mutated, so images may share the others.
    """
    kind = op.kind
    if kind == "write":
        if not data:
            return
        old = image[op.inode].data
        end = offset + len(data)
        padded = old if len(old) >= offset else old + bytes(offset - len(old))
        image[op.inode] = _Node("file", padded[:offset] + data + padded[end:])
    elif kind == "truncate":
        old = image[op.inode].data
        image[op.inode] = _Node("file", old[:op.size] + bytes(max(0, op.size - len(old))))
    elif kind in ("create", "mkdir", "symlink"):
        if op.inode not in image:
            image[op.inode] = _Node("dir" if kind == "mkdir" else
                                    "symlink" if kind == "symlink" else "file",
                                    op.data if kind == "symlink" else b"")
        _set_entry(image, op.parent, op.name, op.inode)
    elif kind == "link":
        _set_entry(image, op.dst_parent, op.dst_name, op.inode)
    elif kind == "rename":
        if image[op.parent].entries.get(op.name) == op.inode:  # type: ignore[union-attr]
            _set_entry(image, op.parent, op.name, None)
        _set_entry(image, op.dst_parent, op.dst_name, op.inode)
    elif kind in ("unlink", "rmdir"):
        _set_entry(image, op.parent, op.name, None)


def _set_entry(image: Image, directory: int, name: str, inode: int | None) -> None:
    node = image[directory]
    entries = dict(node.entries or {})
    if inode is None:
        entries.pop(name, None)
    else:
        entries[name] = inode
    image[directory] = _Node("dir", entries=entries)


def _lookup(image: Image, rel: str) -> int | None:
    """The inode at ``rel`` in ``image``, or ``None``."""
    inode: int | None = 0
    for part in rel.split("/"):
        entries = image[inode].entries if inode is not None else None
        inode = (entries or {}).get(part)
        if inode is None:
            return None
    return inode


def _tree(image: Image) -> Tree:
    """What is reachable from the workspace directory, by relative path."""
    found: Tree = {}

    def visit(inode: int, prefix: str) -> None:
        for name, child in sorted((image[inode].entries or {}).items()):
            node = image[child]
            path = f"{prefix}{name}"
            found[path] = (node.kind, node.data if node.kind != "dir" else b"")
            if node.kind == "dir":
                visit(child, path + "/")

    visit(0, "")
    return found


def tree_key(tree: Tree) -> str:
    """A digest that two trees share exactly when they are equal."""
    digest = hashlib.blake2b(digest_size=16)
    for path, (kind, data) in sorted(tree.items()):
        digest.update(f"{len(path)}:{path}:{kind}:{len(data)}:".encode())
        digest.update(data)
    return digest.hexdigest()


def materialise(tree: Tree, directory: str | os.PathLike[str]) -> None:
    """Write ``tree`` into ``directory`` (created; it must not exist)."""
    directory = Path(directory)
    directory.mkdir()
    for path, (kind, data) in sorted(tree.items()):
        target = directory / path
        if kind == "dir":
            target.mkdir()
        elif kind == "symlink":
            os.symlink(os.fsdecode(data), target)
        else:
            with builtins.open(target, "xb") as f:
                f.write(data)


# -- crash states ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Piece:
    """A page-sized piece of one data call (a whole truncate is one piece)."""

    op: FsOp
    number: int
    offset: int
    data: bytes


def _pieces(op: FsOp) -> list[_Piece]:
    """A write cut at the page boundaries of the file; any other call is one piece."""
    if op.kind != "write" or not op.data:
        return [_Piece(op, 0, op.offset, op.data)]
    pieces: list[_Piece] = []
    start, end = op.offset, op.offset + len(op.data)
    while start < end:
        cut = min(end, (start // PAGE + 1) * PAGE)
        pieces.append(_Piece(op, len(pieces), start,
                             op.data[start - op.offset:cut - op.offset]))
        start = cut
    return pieces


@dataclass
class CrashState:
    """One disk a crash after the first ``crash_point`` calls may leave.

    ``persisted`` and ``lost`` list, among the calls issued, the namespace calls and data
    pieces that reached the disk without being forced there by an fsync, and those that did
    not; ``durable`` are the ones an fsync had already forced.
    """

    crash_point: int
    tree: Tree
    durable: list[str]
    persisted: list[str]
    lost: list[str]

    def sequence(self) -> str:
        """The crash sequence, for a report: the directory changes already durable, and the
        calls not yet synced that reached the disk or were lost."""
        parts = [f"crash after call {self.crash_point}"]
        names = [label for label in self.durable if label.split()[1] in NAMESPACE_KINDS]
        if names:
            parts.append("durable: " + "; ".join(names))
        if self.persisted:
            parts.append("reached the disk un-synced: " + "; ".join(self.persisted))
        if self.lost:
            parts.append("lost: " + "; ".join(self.lost))
        return " | ".join(parts)


def _piece_label(piece: _Piece) -> str:
    op = piece.op
    if op.kind != "write":
        return f"#{op.id + 1} {op.describe()}"
    return f"#{op.id + 1} write {op.path} [{piece.offset}, {piece.offset + len(piece.data)})"


def _forced(ops: Sequence[FsOp]) -> tuple[set[int], set[int]]:
    """Ids of the data calls and namespace calls the completed fsyncs among ``ops`` forced."""
    data: set[int] = set()
    synced_dirs: dict[int, set[int]] = {}  # namespace call id -> directories fsynced after it
    for op in ops:
        if op.kind != "fsync":
            continue
        if op.is_dir:
            for covered in op.covers:
                synced_dirs.setdefault(covered, set()).add(op.inode)
        else:
            data |= op.covers
    by_id = {op.id: op for op in ops}
    names = {i for i, dirs in synced_dirs.items()
             if i in by_id and by_id[i].directories() <= dirs}
    return data, names


def states_at(recording: Recording, crash_point: int, model: str) -> Iterator[CrashState]:
    """Every crash state the persistence ``model`` allows after the first ``crash_point``
    calls (``0`` to ``len(recording.ops)``), some of them possibly equal disks."""
    if model not in MODELS:
        raise CrashExplorerError(f"unknown persistence model {model!r}; use one of "
                                 f"{', '.join(MODELS)}")
    if not 0 <= crash_point <= len(recording.ops):
        raise CrashExplorerError(f"crash point {crash_point} is outside 0..{len(recording.ops)}")
    issued = recording.ops[:crash_point]
    forced_data, forced_names = _forced(issued)
    names = [op for op in issued if op.namespace]
    # An entry change that a durable later change of the same entry builds on is durable too.
    earlier: dict[int, list[FsOp]] = {}
    last_on: dict[tuple[int, str], FsOp] = {}
    for op in names:
        earlier[op.id] = [last_on[e] for e in op.entries() if e in last_on]
        for entry in op.entries():
            last_on[entry] = op
    if model == "ordered":  # one journal: everything before a durable change is durable
        last = max((i for i, op in enumerate(names) if op.id in forced_names), default=-1)
        forced_names.update(op.id for op in names[:last + 1])
    for op in reversed(names):
        if op.id in forced_names:
            forced_names.update(dep.id for dep in earlier[op.id])
    files: dict[int, list[_Piece]] = {}
    for op in issued:
        if op.kind in DATA_KINDS:
            files.setdefault(op.inode, []).extend(_pieces(op))

    base: Image = dict(recording.initial)
    for op in issued:  # inodes exist from their creation on, named or not
        if op.kind in ("create", "mkdir", "symlink") and op.inode not in base:
            base[op.inode] = _Node("dir" if op.kind == "mkdir" else
                                   "symlink" if op.kind == "symlink" else "file",
                                   op.data if op.kind == "symlink" else b"")
    durable_labels = []
    for op in names:
        if op.id in forced_names:
            _apply(base, op, 0, b"")
            durable_labels.append(f"#{op.id + 1} {op.describe()}")
    open_files: list[list[_Piece]] = []
    for pieces in files.values():
        cut = 0
        for i, piece in enumerate(pieces):
            if piece.op.id in forced_data:
                cut = i + 1
        for piece in pieces[:cut]:
            _apply(base, piece.op, piece.offset, piece.data)
            if piece.number == 0:
                durable_labels.append(f"#{piece.op.id + 1} {piece.op.describe()}")
        if pieces[cut:]:
            open_files.append(pieces[cut:])
    open_names = [op for op in names if op.id not in forced_names]

    if model == "ordered":
        name_choices: list[list[FsOp]] = [open_names[:n] for n in range(len(open_names) + 1)]
        file_choices = [[pieces[:n] for n in range(len(pieces) + 1)] for pieces in open_files]
    else:
        name_choices = list(_closed_subsets(open_names, earlier))
        file_choices = [[list(c) for n in range(len(pieces) + 1)
                         for c in itertools.combinations(pieces, n)] for pieces in open_files]
    total = len(name_choices)
    for choices in file_choices:
        total *= len(choices)
    if total > MAX_STATES_PER_POINT:
        raise CrashExplorerError(
            f"{total} crash states after call {crash_point} under the {model} model: the "
            "workload is too large to explore exhaustively; make its state smaller")
    for chosen_names in name_choices:
        named = {op.id for op in chosen_names}
        for chosen_files in itertools.product(*file_choices):
            image = dict(base)
            for op in chosen_names:
                _apply(image, op, 0, b"")
            kept = set()
            for pieces in chosen_files:
                for piece in pieces:
                    _apply(image, piece.op, piece.offset, piece.data)
                    kept.add((piece.op.id, piece.number))
            persisted = [f"#{op.id + 1} {op.describe()}" for op in chosen_names]
            lost = [f"#{op.id + 1} {op.describe()}" for op in open_names if op.id not in named]
            for pieces in open_files:
                for piece in pieces:
                    (persisted if (piece.op.id, piece.number) in kept else lost).append(
                        _piece_label(piece))
            yield CrashState(crash_point, _tree(image), durable_labels, persisted, lost)


def _closed_subsets(ops: list[FsOp], earlier: Mapping[int, list[FsOp]]
                    ) -> Iterator[list[FsOp]]:
    """Every subset of ``ops`` that holds, with each call, the earlier calls on its entries
    (among ``ops``; the others are durable already)."""
    members = {op.id for op in ops}

    def extend(i: int, chosen: list[FsOp], ids: frozenset[int]) -> Iterator[list[FsOp]]:
        if i == len(ops):
            yield chosen
            return
        op = ops[i]
        yield from extend(i + 1, chosen, ids)
        if all(dep.id in ids or dep.id not in members for dep in earlier[op.id]):
            yield from extend(i + 1, chosen + [op], ids | {op.id})

    yield from extend(0, [], frozenset())


# -- exploring ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Violation:
    """An invariant a crash state broke, with the crash sequence that leads there."""

    operation: str
    model: str
    crash_point: int
    invariant: str
    message: str
    sequence: str

    def __str__(self) -> str:
        return (f"[{self.operation}, {self.model}] {self.invariant}: {self.message}\n"
                f"    {self.sequence}")


@dataclass
class Exploration:
    """What exploring one operation under one persistence model found.

    Attributes:
        crash_states: crash states constructed (every crash point, every choice the model
            allows, equal disks counted once per crash point).
        disks: distinct disks the check ran on.
        violating_states: crash states that broke at least one invariant.
        violations: examples: the first crash state (and sequence) for each distinct finding.
        outside: changes the operation made outside the paths it may change.
    """

    operation: str
    model: str
    calls: int
    crash_states: int
    disks: int
    violating_states: int
    violations: list[Violation]
    seconds: float
    outside: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violating_states and not self.outside

    def summary(self) -> str:
        """One line: the operation, the model, what was explored and found, how long it took."""
        outside = f", {len(self.outside)} changes outside" if self.outside else ""
        return (f"{self.operation:<26} {self.model:<11} {self.calls:>4} calls "
                f"{self.crash_states:>6} states {self.disks:>5} disks "
                f"{self.violating_states:>5} violating{outside}  {self.seconds:6.2f} s")


Check = Callable[[Path, bool], list[tuple[str, str]]]
"""A check: given the workspace holding a materialised crash state, and whether the operation
had returned (the crash came after its last call), return ``(invariant, message)`` pairs."""


def without_leftover_bytes(tree: Tree, prefixes: Sequence[str] = (".tmp-", ".trash-")) -> Tree:
    """``tree`` with the bytes of every file below an entry named with one of ``prefixes``
    dropped (names kept): the unfinished saves and half-deleted checkpoints no reader opens
    and the next writer removes whole. For layers above the engine whose checks are costly;
    the engine's own explorations check those bytes too."""
    def leftover(path: str) -> bool:
        return any(part.startswith(prefixes) for part in path.split("/"))

    return {path: (kind, b"" if kind == "file" and leftover(path) else data)
            for path, (kind, data) in tree.items()}


@contextmanager
def fsyncs_skipped() -> Iterator[None]:
    """Make ``os.fsync``/``os.fdatasync`` no-ops (for setting up and checking throwaway
    copies, whose durability is what the recording models, not what they measure)."""
    saved = {name: getattr(os, name) for name in ("fsync", "fdatasync") if hasattr(os, name)}
    for name in saved:
        setattr(os, name, lambda fd: None)
    try:
        yield
    finally:
        for name, original in saved.items():
            setattr(os, name, original)


Results = dict[tuple[str, bool], list[tuple[str, str]]]
"""What a check found, by ``(disk key, after the operation returned)``: shared by the calls
that explore one recording, so that each distinct disk is checked once."""


def checked_states(recording: Recording, crash_point: int, model: str, check: Check, *,
                   results: Results | None = None,
                   same_for_check: Callable[[Tree], Tree] | None = None
                   ) -> list[tuple[CrashState, list[tuple[str, str]]]]:
    """The distinct crash states after ``crash_point`` calls under ``model``, each with what
    ``check`` found on it (see :func:`explore`, which calls this for every crash point).

    Call it inside :func:`fsyncs_skipped`; ``results`` carries the checks already made.
    """
    results = {} if results is None else results
    final = crash_point == len(recording.ops)
    found: list[tuple[CrashState, list[tuple[str, str]]]] = []
    seen: set[str] = set()
    for state in states_at(recording, crash_point, model):
        key = tree_key(state.tree)
        if key in seen:
            continue
        seen.add(key)
        if same_for_check is not None:
            key = tree_key(same_for_check(state.tree))
        if (key, final) not in results:
            if recording.workspace.exists():
                shutil.rmtree(recording.workspace)
            materialise(state.tree, recording.workspace)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # fallbacks past torn checkpoints are expected
                results[(key, final)] = check(recording.workspace, final)
        found.append((state, results[(key, final)]))
    return found


def explore(recording: Recording, model: str, check: Check, *, operation: str = "",
            crash_points: Iterable[int] | None = None, max_violations: int = 50,
            same_for_check: Callable[[Tree], Tree] | None = None) -> Exploration:
    """Check every crash state of ``recording`` under ``model``.

    Each distinct disk is materialised at the recording's workspace path (so absolute paths
    written into files stay right) and ``check`` runs on it with fsyncs skipped. A disk seen
    at several crash points is checked once, plus once more if it is also a state after the
    operation returned (that check may demand more: durability).

    ``same_for_check`` maps a disk to what the check can tell apart (for example
    :func:`without_leftover_bytes`): disks it maps to the same value are checked once. Every
    crash state is still constructed and counted.

    The workspace directory is replaced by each state in turn and left holding the last one.
    """
    started = time.perf_counter()
    points = range(len(recording.ops) + 1) if crash_points is None else crash_points
    results: Results = {}
    violations: list[Violation] = []
    seen_violations: set[tuple[str, str]] = set()
    states = violating = 0
    with fsyncs_skipped():
        for point in points:
            for state, found in checked_states(recording, point, model, check, results=results,
                                               same_for_check=same_for_check):
                states += 1
                violating += bool(found)
                for invariant, message in found:
                    # the first crash sequence of each distinct finding is the example
                    if len(violations) < max_violations and \
                            (invariant, message) not in seen_violations:
                        seen_violations.add((invariant, message))
                        violations.append(Violation(operation, model, point, invariant,
                                                    message, state.sequence()))
    return Exploration(operation, model, len(recording.ops), states, len(results), violating,
                       violations, time.perf_counter() - started, list(recording.outside))
