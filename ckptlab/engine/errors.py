"""Errors ckptlab raises on purpose.

Every error carries a message written for a person: what is wrong and what to do. The CLI prints
that message as one line and exits non-zero; library users can catch :class:`CkptlabError`.
"""

from __future__ import annotations


class CkptlabError(Exception):
    """Base class for every error ckptlab raises deliberately."""


class CheckpointNotFoundError(CkptlabError):
    """A path or run directory holds no checkpoint."""


class CheckpointCorruptError(CkptlabError):
    """A checkpoint failed verification (missing file, wrong size, hash mismatch, bad manifest)."""


class ForeignFileError(CkptlabError):
    """A file or directory is not a ckptlab checkpoint (for example a pickled ``.pt`` file)."""


class UnsupportedFormatError(CkptlabError):
    """A checkpoint written in a format version this ckptlab does not understand."""


class IncompatibleCheckpointError(CkptlabError):
    """A checkpoint that does not fit the objects or configuration it is loaded into."""


class UnsupportedValueError(CkptlabError, TypeError):
    """A ``state_dict()`` value that cannot be stored without pickle (the message names its
    path). Also a ``TypeError``, as before it had its own class."""


class RollbackRequiredError(CkptlabError):
    """Saving or resuming here would continue from an older checkpoint while newer valid
    ones of the same run exist; ask for a rollback explicitly (newer ones are moved aside)."""


class MissingExtraError(CkptlabError, ImportError):
    """A part of ckptlab needs an optional extra (``rl``, ``sb3``, ``lab``) whose libraries are
    not installed; the one-line message names the extra and the command that installs it. Also
    an ``ImportError``, which is what a failed import raised before."""
