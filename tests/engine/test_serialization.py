"""The pickle-free encoding round-trips every value a state_dict() may hold."""

import math
import random

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from ckptlab.engine.serialization import join_state, referenced_tensor_keys, split_state


def roundtrip(value):
    import json

    tree, tensors = split_state(value, "c")
    tree = json.loads(json.dumps(tree, allow_nan=False))  # must be strict JSON
    return join_state(tree, tensors), tree, tensors


def test_nested_structures_keep_their_types():
    value = {
        "tuple": (1, 2.5, "x"),
        "int_keys": {0: {"step": torch.tensor(3.0)}, 1: None},
        "marker_lookalike": {"__tensor__": "not a tensor"},
        "floats": [math.nan, math.inf, -math.inf, 0.1],
        "arrays": [np.arange(5, dtype=np.uint32), np.zeros((2, 3), dtype=np.float64),
                   np.array([True, False])],
        "tensor0d": torch.tensor(7, dtype=torch.int64),
        "bool_tensor": torch.tensor([True, False]),
        "numpy_scalar": np.float64(1.5),
    }
    back, _, tensors = roundtrip(value)
    assert back["tuple"] == (1, 2.5, "x")
    assert set(back["int_keys"]) == {0, 1} and torch.equal(back["int_keys"][0]["step"],
                                                           torch.tensor(3.0))
    assert back["marker_lookalike"] == {"__tensor__": "not a tensor"}
    assert math.isnan(back["floats"][0]) and back["floats"][1:] == [math.inf, -math.inf, 0.1]
    for original, restored in zip(value["arrays"], back["arrays"]):
        assert isinstance(restored, np.ndarray) and restored.dtype == original.dtype
        assert np.array_equal(original, restored)
    assert back["tensor0d"].shape == () and int(back["tensor0d"]) == 7
    assert back["bool_tensor"].dtype == torch.bool
    assert back["numpy_scalar"] == 1.5
    assert len(tensors) == 6


def test_python_and_numpy_rng_states_round_trip():
    random.seed(3)
    py_state = random.getstate()
    np.random.seed(4)
    np_state = np.random.get_state(legacy=False)
    back, _, _ = roundtrip({"py": py_state, "np": np_state})
    random.setstate(back["py"])
    a = random.random()
    random.setstate(py_state)
    assert a == random.random()
    np.random.set_state(back["np"])
    x = np.random.rand()
    np.random.set_state(np_state)
    assert x == np.random.rand()


def test_optimizer_state_round_trips_exactly():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    back, _, _ = roundtrip(opt.state_dict())
    fresh = torch.optim.Adam(torch.nn.Linear(3, 2).parameters(), lr=1e-3)
    fresh.load_state_dict(back)
    assert fresh.state_dict()["param_groups"] == opt.state_dict()["param_groups"]
    assert isinstance(back["param_groups"][0]["betas"], tuple)


@pytest.mark.parametrize("bad", [object(), b"bytes", {1.5: "float key"},
                                 np.array([object()], dtype=object)])
def test_unsupported_values_name_their_path(bad):
    with pytest.raises(TypeError, match="c/inner"):
        split_state({"inner": bad}, "c")


def test_tensor_keys_are_listed():
    tree, tensors = split_state({"a": torch.zeros(2), "b": [np.ones(1)], "c": 1}, "comp")
    assert sorted(referenced_tensor_keys(tree)) == sorted(tensors) == ["comp/a", "comp/b/0"]


json_leaves = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=5),
                        st.floats(allow_nan=False))
values = st.recursive(
    json_leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.tuples(children, children),
        st.dictionaries(st.one_of(st.text(max_size=4), st.integers()), children, max_size=3)),
    max_leaves=12)


@given(values)
def test_any_json_like_value_round_trips(value):
    back, _, _ = roundtrip(value)
    assert back == value and type(back) is type(value)
