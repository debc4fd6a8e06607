"""How a ckptlab process speaks to a person: a deliberate failure is one ``error:`` line and
exit status 2, a warning one ``warning:`` line.

The command line (:mod:`ckptlab.cli`) and the processes a training job starts (each rank of
``ckptlab train --nproc N``, the runs of ``ckptlab demo``) use the same conventions, so a
rank's message reads like the command's own.
"""

from __future__ import annotations

import contextlib
import gc
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

from .errors import CkptlabError

EXIT_OK, EXIT_VERIFY_FAILED, EXIT_ERROR = 0, 1, 2


def error_line(exc: CkptlabError | OSError) -> str:
    """The one line a deliberate failure (a :class:`CkptlabError`) or a refusal by the disk or
    the permissions (an ``OSError``) is reported as."""
    if isinstance(exc, CkptlabError):
        return f"error: {exc}"
    return (f"error: {exc.filename or ''}{': ' if exc.filename else ''}"
            f"{exc.strerror or exc}")


def _show_warning(message: Any, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def warnings_as_lines() -> Iterator[None]:
    """Show each warning raised inside as one ``warning: MESSAGE`` line on stderr."""
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        yield


def run_reporting_errors(command: Callable[[], int]) -> int:
    """Run ``command`` (which returns an exit status) with warnings as one line each; a
    deliberate failure is printed as one ``error:`` line and returns :data:`EXIT_ERROR`.
    Anything else (a bug) propagates with its traceback."""
    with warnings_as_lines():
        try:
            return command()
        except (CkptlabError, OSError) as exc:
            print(error_line(exc), file=sys.stderr)
            return EXIT_ERROR


def exit_process(status: int) -> NoReturn:
    """End this process with ``status``, skipping the interpreter's final garbage collection.

    By now every file is closed and every save committed. The final collection would still
    walk torch's whole object graph (about 0.8 s per process, paid by every rank and every
    resume); freezing the heap skips that collection and nothing else (finalizers driven by
    reference counts still run).
    """
    gc.freeze()
    sys.exit(status)
