"""Pickle-free encoding of nested ``state_dict()`` values.

A component's state is a tree of dicts, lists and tuples whose leaves are tensors, numpy arrays,
numbers, strings, booleans or ``None``. :func:`split_state` separates that tree into

* a JSON-compatible tree, where every array leaf is replaced by a reference such as
  ``{"__tensor__": "agent/q_net/0.weight"}``, and
* a flat ``{key: torch.Tensor}`` dict that is written with safetensors.

:func:`join_state` reverses it exactly: tuples stay tuples, integer dict keys stay integers
(torch optimizers use them), numpy arrays come back as numpy arrays with their dtype, and NaN or
infinite floats survive. Nothing here ever unpickles: JSON and safetensors cannot run code.

Introduced in notebook ``01_pipeline_trace`` (what the files of a checkpoint contain).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import CheckpointCorruptError, UnsupportedValueError
from .format import MAX_STATE_DEPTH, load_json_bounded, storable_dtype

# Markers used inside the JSON tree. A user dict whose keys start with "__" is stored in the
# key/value-pair form, so a marker can never be confused with user data.
_TENSOR = "__tensor__"
_NDARRAY = "__ndarray__"
_TUPLE = "__tuple__"
_PAIRS = "__pairs__"
_FLOAT = "__float__"
_ODICT = "__odict__"          # an OrderedDict, as key/value pairs (order and type kept)
_NDARRAY_BE = "__ndarray_be__"  # a big-endian numpy array, stored little-endian
MARKERS = frozenset({_TENSOR, _NDARRAY, _TUPLE, _PAIRS, _FLOAT, _ODICT, _NDARRAY_BE})

_JSON_SCALARS = (str, bool, int, type(None))


def split_state(state: Any, prefix: str) -> tuple[Any, dict[str, torch.Tensor]]:
    """Split ``state`` into a JSON-compatible tree and a flat dict of CPU tensors.

    Args:
        state: the value returned by a component's ``state_dict()``.
        prefix: the component name; tensor keys are ``prefix/path/to/leaf``.

    Raises:
        UnsupportedValueError: a leaf has a type or dtype that cannot be stored without
            pickle; the message names the path of the offending value. Raised here, on the
            caller's thread, so an async save fails at the call, not later.
    """
    tensors: dict[str, torch.Tensor] = {}

    def encode(value: Any, path: str, depth: int = 1) -> Any:
        if depth > MAX_STATE_DEPTH:  # the reader refuses deeper trees: never write one
            raise UnsupportedValueError(
                f"cannot checkpoint '{path}': the state is nested more than {MAX_STATE_DEPTH} "
                "levels deep; flatten it in state_dict()")
        if isinstance(value, torch.Tensor):
            if not storable_dtype(value.dtype):
                raise UnsupportedValueError(
                    f"cannot checkpoint a {value.dtype} tensor at '{path}': safetensors has no "
                    "such dtype; convert it (for example to float32) in state_dict()")
            return {_TENSOR: _add(path, value.detach().to("cpu").contiguous())}
        if isinstance(value, np.ndarray):
            marker = _NDARRAY
            if value.dtype.byteorder == ">":  # stored little-endian, flagged to come back as is
                value, marker = value.astype(value.dtype.newbyteorder("<")), _NDARRAY_BE
            try:
                tensor = torch.from_numpy(value if value.flags.c_contiguous
                                          else value.copy(order="C"))  # keeps 0-d arrays 0-d
            except TypeError:
                tensor = None
            if tensor is None or not storable_dtype(tensor.dtype):
                raise UnsupportedValueError(
                    f"cannot checkpoint a numpy array of dtype {value.dtype} at '{path}': only "
                    "bool, integer, float16/32/64 and complex64 arrays can be stored without "
                    "pickle; convert it in state_dict()")
            return {marker: _add(path, tensor)}
        if isinstance(value, np.generic):  # numpy scalar: store as the equivalent Python value
            return encode(value.item(), path, depth)
        if isinstance(value, float):
            return value if math.isfinite(value) else {_FLOAT: repr(value)}
        if isinstance(value, _JSON_SCALARS):
            return value
        if isinstance(value, tuple):
            return {_TUPLE: [encode(v, f"{path}/{i}", depth + 1) for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [encode(v, f"{path}/{i}", depth + 1) for i, v in enumerate(value)]
        if isinstance(value, OrderedDict):  # type and order both come back
            return {_ODICT: _pairs(value, path, depth)}
        if isinstance(value, Mapping):
            plain = all(isinstance(k, str) and not k.startswith("__") for k in value)
            if plain:
                return {k: encode(v, f"{path}/{k}", depth + 1) for k, v in value.items()}
            return {_PAIRS: _pairs(value, path, depth)}
        raise UnsupportedValueError(
            f"cannot checkpoint a value of type {type(value).__name__} at '{path}': "
            "state_dict() may only contain tensors, numpy arrays, numbers, strings, booleans, "
            "None, lists, tuples and dicts"
        )

    def _pairs(value: Mapping[Any, Any], path: str, depth: int) -> list[list[Any]]:
        pairs = []
        for k, v in value.items():
            if isinstance(k, np.generic):
                k = k.item()
            if not isinstance(k, (str, int, bool, type(None))):
                raise UnsupportedValueError(f"cannot checkpoint dict key {k!r} of type "
                                            f"{type(k).__name__} at '{path}'")
            pairs.append([k, encode(v, f"{path}/{k}", depth + 1)])
        return pairs

    def _add(path: str, tensor: torch.Tensor) -> str:
        if path in tensors:
            raise UnsupportedValueError(f"two values map to the same tensor key '{path}'")
        tensors[path] = tensor
        return path

    return encode(state, prefix), tensors


def join_state(tree: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Rebuild the value :func:`split_state` split, looking tensors up in ``tensors``.

    Raises:
        KeyError: the tree references a tensor that ``tensors`` does not contain.
        ValueError: the tree contains a marker this version does not know.
        TypeError: a tensor cannot become the numpy array the tree asks for.
    """
    if isinstance(tree, list):
        return [join_state(v, tensors) for v in tree]
    if not isinstance(tree, dict):
        return tree
    if len(tree) == 1:
        (marker, payload), = tree.items()
        if marker == _TENSOR:
            return tensors[payload]
        if marker == _NDARRAY:
            return tensors[payload].numpy()
        if marker == _NDARRAY_BE:
            array = tensors[payload].numpy()
            return array.astype(array.dtype.newbyteorder(">"))
        if marker == _ODICT:
            return OrderedDict((k, join_state(v, tensors)) for k, v in payload)
        if marker == _TUPLE:
            return tuple(join_state(v, tensors) for v in payload)
        if marker == _PAIRS:
            return {k: join_state(v, tensors) for k, v in payload}
        if marker == _FLOAT:
            return float(payload)
        if marker.startswith("__"):
            raise ValueError(f"unknown marker {marker!r} in checkpoint state")
    return {k: join_state(v, tensors) for k, v in tree.items()}


def referenced_tensor_keys(tree: Any, torch_only: bool = False) -> list[str]:
    """Return every tensor key a JSON tree references (used to size components); with
    ``torch_only``, only those that come back as torch tensors (not numpy arrays)."""
    keys: list[str] = []
    leaves = (_TENSOR,) if torch_only else (_TENSOR, _NDARRAY, _NDARRAY_BE)

    def walk(node: Any) -> None:
        if isinstance(node, list):
            for v in node:
                walk(v)
        elif isinstance(node, dict):
            if len(node) == 1 and next(iter(node)) in (_TENSOR, _NDARRAY, _NDARRAY_BE):
                if next(iter(node)) in leaves:
                    keys.append(next(iter(node.values())))
            elif len(node) == 1 and next(iter(node)) in (_PAIRS, _ODICT):
                for _, v in next(iter(node.values())):
                    walk(v)
            else:
                for v in node.values():
                    walk(v)

    walk(tree)
    return keys


# --------------------------------------------------------------------------------------------
# Reading back: validate a state.json tree against the markers above before it is decoded
# --------------------------------------------------------------------------------------------

def parse_state_json(data: bytes, source: Path) -> dict[str, Any]:
    """Parse a (hash-verified) ``state.json`` and validate it (:func:`validate_state_tree`)."""
    tree = load_json_bounded(data, f"{source}")
    validate_state_tree(tree, source)
    return tree


def validate_state_tree(tree: Any, source: Path) -> None:
    """Check that a state.json tree is what :func:`split_state` writes.

    An object of component names, each a tree of JSON values in which every marker object
    has the payload its marker needs (a tensor key string, a list for a tuple, key/value
    pairs with scalar keys, a float's text). :func:`join_state` can then
    rebuild it without meeting a type it does not expect.

    Raises:
        CheckpointCorruptError: what is malformed, and where.
    """
    if not isinstance(tree, dict):
        raise CheckpointCorruptError(f"{source}: the top level is not an object of components")

    def fail(where: str, what: str) -> CheckpointCorruptError:
        return CheckpointCorruptError(f"{source}: {what} at '{where}'")

    # Iterative, with a depth bound: join_state recurses, so the depth it meets is bounded here.
    stack: list[tuple[Any, str, int]] = [(v, k, 1) for k, v in tree.items()]
    while stack:
        node, where, depth = stack.pop()
        if depth > MAX_STATE_DEPTH:
            raise fail(where, f"nesting deeper than {MAX_STATE_DEPTH} levels")
        depth += 1
        if isinstance(node, list):
            stack.extend((v, f"{where}/{i}", depth) for i, v in enumerate(node))
        elif isinstance(node, dict):
            marker = next(iter(node)) if len(node) == 1 else None
            if marker in (_TENSOR, _NDARRAY) or (marker or "").startswith("__ndarray"):
                if marker not in MARKERS or not isinstance(node[marker], str):
                    raise fail(where, "a malformed array reference")
            elif marker == _FLOAT:
                if node[marker] not in ("nan", "inf", "-inf"):
                    raise fail(where, "a malformed non-finite float")
            elif marker == _TUPLE:
                if not isinstance(node[marker], list):
                    raise fail(where, "a malformed tuple")
                stack.extend((v, f"{where}/{i}", depth) for i, v in enumerate(node[marker]))
            elif marker in (_PAIRS, _ODICT):
                pairs = node[marker]
                if not isinstance(pairs, list) or not all(
                        isinstance(p, list) and len(p) == 2
                        and isinstance(p[0], (str, int, bool, type(None))) for p in pairs):
                    raise fail(where, "malformed key/value pairs")
                stack.extend((p[1], f"{where}/{p[0]}", depth) for p in pairs)
            elif marker is not None and marker.startswith("__"):
                raise fail(where, f"an unknown marker {marker!r} (written by a newer ckptlab?)")
            else:
                stack.extend((v, f"{where}/{k}", depth) for k, v in node.items())
        elif not isinstance(node, (str, int, float, bool, type(None))):
            raise fail(where, f"a value of type {type(node).__name__}")
