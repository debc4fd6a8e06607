"""The checkpoint engine: atomic, verified, pickle-free checkpoints of any ``state_dict()``.

It knows components (``state_dict()`` / ``load_state_dict()``), files, hashes and policies, and
nothing about what is being trained: it imports no RL code, no gymnasium, no plotting or widget
library. Its dependencies are torch, numpy and safetensors (in a clone of ckptlab's
repository, ``pip install -c requirements.txt .``).

Its modules, one line each, are in the module map of docs/architecture.md (the one list;
``tests/test_module_map.py`` keeps it true).
"""

# Plugs the object-store protocol into the generic entry points (see location.store_protocol).
from . import remote  # noqa: F401
from .catalog import Catalog, CatalogRow
from .compare import ComponentComparison, compare_checkpoints
from .errors import (
    CheckpointCorruptError,
    CheckpointNotFoundError,
    CkptlabError,
    ForeignFileError,
    IncompatibleCheckpointError,
    MissingExtraError,
    RollbackRequiredError,
    UnsupportedFormatError,
    UnsupportedValueError,
)
from .format import (
    ABANDONED_SUBDIR,
    BEST,
    CHECKPOINTS_SUBDIR,
    DECISIONS,
    FORMAT_NAME,
    FORMAT_VERSION,
    LATEST,
    MANIFEST,
    STATE,
    TENSORS,
    checkpoint_dir_name,
    checkpoint_step,
    describe_digest,
    describe_foreign_file,
    library_versions,
    read_manifest,
    read_tensor_table,
)
from .global_rng import GLOBAL_RNG_KEYS, GlobalRNG, seed_global_generators
from .lock import RunLock, RunLockedError
from .manager import CheckpointManager, SaveTimings
from .partial import LoadReport, export_checkpoint, load_components, load_parameters
from .policies import (
    FINAL,
    START,
    AnyOf,
    BestBy,
    CheckpointRecord,
    Decision,
    DiskBudget,
    EveryNCounts,
    EveryNSteps,
    EveryTSeconds,
    Final,
    Hybrid,
    KeepEveryKSteps,
    KeepEveryTSeconds,
    KeepLastN,
    KeepTopK,
    OnImprovement,
    OnStart,
    RetentionPolicy,
    SaveContext,
    SavePolicy,
    decide_retention,
    wall_clock,
)
from .reader import (
    CheckpointFallbackWarning,
    CheckpointInfo,
    Stateful,
    committed_checkpoints,
    latest_valid_checkpoint,
    load_checkpoint_state,
    load_latest_valid,
    read_decision_log,
    read_pointer,
    read_pointer_record,
    resolve_location,
    restore_components,
    verify_checkpoint,
)
from .writer import CheckpointWriteError, PointerSetAsideWarning

__all__ = [
    "Catalog", "CatalogRow", "ComponentComparison", "compare_checkpoints",
    "CheckpointCorruptError", "CheckpointNotFoundError", "CkptlabError", "ForeignFileError",
    "IncompatibleCheckpointError", "UnsupportedFormatError", "RollbackRequiredError",
    "MissingExtraError",
    "UnsupportedValueError", "ABANDONED_SUBDIR", "KeepEveryTSeconds", "read_pointer_record",
    "BEST", "CHECKPOINTS_SUBDIR", "DECISIONS", "FORMAT_NAME", "FORMAT_VERSION", "LATEST",
    "MANIFEST", "STATE", "TENSORS", "checkpoint_dir_name", "checkpoint_step",
    "describe_digest", "describe_foreign_file", "library_versions", "read_manifest",
    "read_tensor_table",
    "GLOBAL_RNG_KEYS", "GlobalRNG", "seed_global_generators",
    "RunLock", "RunLockedError", "CheckpointManager", "SaveTimings",
    "LoadReport", "export_checkpoint", "load_components", "load_parameters",
    "AnyOf", "BestBy", "CheckpointRecord", "Decision", "DiskBudget", "EveryNCounts",
    "EveryNSteps", "EveryTSeconds", "Final", "Hybrid", "KeepEveryKSteps", "KeepLastN",
    "KeepTopK", "OnImprovement", "OnStart", "RetentionPolicy", "SaveContext", "SavePolicy",
    "decide_retention", "wall_clock", "FINAL", "START",
    "CheckpointFallbackWarning", "CheckpointInfo", "Stateful", "committed_checkpoints",
    "latest_valid_checkpoint", "load_checkpoint_state", "load_latest_valid",
    "read_decision_log", "read_pointer", "resolve_location", "restore_components",
    "verify_checkpoint", "CheckpointWriteError", "PointerSetAsideWarning",
]
