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
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

# Markers used inside the JSON tree. A user dict whose keys start with "__" is stored in the
# key/value-pair form, so a marker can never be confused with user data.
_TENSOR = "__tensor__"
_NDARRAY = "__ndarray__"
_TUPLE = "__tuple__"
_PAIRS = "__pairs__"
_FLOAT = "__float__"

_JSON_SCALARS = (str, bool, int, type(None))


def split_state(state: Any, prefix: str) -> tuple[Any, dict[str, torch.Tensor]]:
    """Split ``state`` into a JSON-compatible tree and a flat dict of CPU tensors.

    Args:
        state: the value returned by a component's ``state_dict()``.
        prefix: the component name; tensor keys are ``prefix/path/to/leaf``.

    Raises:
        TypeError: a leaf has a type that cannot be stored without pickle; the message names
            the path of the offending value.
    """
    tensors: dict[str, torch.Tensor] = {}

    def encode(value: Any, path: str) -> Any:
        if isinstance(value, torch.Tensor):
            return {_TENSOR: _add(path, value.detach().to("cpu").contiguous())}
        if isinstance(value, np.ndarray):
            if value.dtype == object:
                raise TypeError(f"cannot checkpoint an object-dtype numpy array at '{path}'")
            return {_NDARRAY: _add(path, torch.from_numpy(np.ascontiguousarray(value)))}
        if isinstance(value, np.generic):  # numpy scalar: store as the equivalent Python value
            return encode(value.item(), path)
        if isinstance(value, float):
            return value if math.isfinite(value) else {_FLOAT: repr(value)}
        if isinstance(value, _JSON_SCALARS):
            return value
        if isinstance(value, tuple):
            return {_TUPLE: [encode(v, f"{path}/{i}") for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [encode(v, f"{path}/{i}") for i, v in enumerate(value)]
        if isinstance(value, Mapping):
            plain = all(isinstance(k, str) and not k.startswith("__") for k in value)
            if plain:
                return {k: encode(v, f"{path}/{k}") for k, v in value.items()}
            pairs = []
            for k, v in value.items():
                if not isinstance(k, (str, int, bool, type(None))):
                    raise TypeError(f"cannot checkpoint dict key {k!r} of type "
                                    f"{type(k).__name__} at '{path}'")
                pairs.append([k, encode(v, f"{path}/{k}")])
            return {_PAIRS: pairs}
        raise TypeError(
            f"cannot checkpoint a value of type {type(value).__name__} at '{path}': "
            "state_dict() may only contain tensors, numpy arrays, numbers, strings, booleans, "
            "None, lists, tuples and dicts"
        )

    def _add(path: str, tensor: torch.Tensor) -> str:
        if path in tensors:
            raise TypeError(f"two values map to the same tensor key '{path}'")
        tensors[path] = tensor
        return path

    return encode(state, prefix), tensors


def join_state(tree: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Rebuild the value :func:`split_state` split, looking tensors up in ``tensors``.

    Raises:
        KeyError: the tree references a tensor that ``tensors`` does not contain.
        ValueError: the tree contains a marker this version does not know.
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
        if marker == _TUPLE:
            return tuple(join_state(v, tensors) for v in payload)
        if marker == _PAIRS:
            return {k: join_state(v, tensors) for k, v in payload}
        if marker == _FLOAT:
            return float(payload)
        if marker.startswith("__"):
            raise ValueError(f"unknown marker {marker!r} in checkpoint state")
    return {k: join_state(v, tensors) for k, v in tree.items()}


def referenced_tensor_keys(tree: Any) -> list[str]:
    """Return every tensor key a JSON tree references (used to size components)."""
    keys: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, list):
            for v in node:
                walk(v)
        elif isinstance(node, dict):
            if len(node) == 1 and next(iter(node)) in (_TENSOR, _NDARRAY):
                keys.append(next(iter(node.values())))
            elif len(node) == 1 and next(iter(node)) == _PAIRS:
                for _, v in next(iter(node.values())):
                    walk(v)
            else:
                for v in node.values():
                    walk(v)

    walk(tree)
    return keys
