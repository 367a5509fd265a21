"""The pickled member of data_3d_h36m.npz is read by an opcode interpreter, never by Python's pickle."""

from __future__ import annotations

import ast
import io
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import numpy.lib.format as npy_format
import pytest

import stages.datasets.pickle_arrays as pickle_arrays
import stages.datasets.safe_npz as safe_npz
from stages.datasets.safe_npz import read_pickled_member

# What numpy's ndarray.__reduce__ names (numpy.core... in 1.x, numpy._core... in 2.x).
_RECONSTRUCT = np.zeros(1).__reduce__()[0]


def _poses() -> dict:
    """{subject: {action: array}}: the H36M shape plus every layout and dtype the reader must keep."""
    rng = np.random.default_rng(0)
    walk = rng.normal(size=(5, 32, 3))
    return {
        "S1": {
            "Walking": walk.astype(np.float32),
            "Walking 1": walk,  # float64
            "Fortran": np.asfortranarray(walk[:, :, 0]),
            "BigEndian32": walk.astype(">f4"),
            "BigEndian64": np.asfortranarray(walk.astype(">f8")),
            "Scalar": np.array(2.5),
            "Empty": np.zeros((0, 32, 3), np.float32),
        },
        "S9": {
            "bool": np.array([[True, False]]),
            "int8": np.arange(-3, 3, dtype=np.int8),
            "uint16": np.arange(4, dtype=">u2"),
            "int64": np.arange(6, dtype=np.int64).reshape(2, 3),
            "float16": np.linspace(0, 1, 4, dtype=np.float16),
            "complex": np.array([1 + 2j, 3 - 4j], dtype=np.complex64),
            "strided": walk[::2, ::3, 1],  # neither C nor Fortran contiguous
        },
    }


def _assert_same(loaded: dict, expected: dict) -> None:
    assert loaded.keys() == expected.keys()
    for subject, actions in expected.items():
        assert loaded[subject].keys() == actions.keys()
        for action, array in actions.items():
            got = loaded[subject][action]
            assert isinstance(got, np.ndarray), (subject, action)
            assert got.dtype == array.dtype and got.shape == array.shape, (subject, action, got.dtype)
            np.testing.assert_array_equal(got, array)
            if array.ndim > 1 and array.flags.f_contiguous and not array.flags.c_contiguous:
                assert got.flags.f_contiguous, (subject, action)
            assert got.flags.writeable


def _wrap(value) -> np.ndarray:
    wrapper = np.empty((), dtype=object)
    wrapper[()] = value
    return wrapper


def _npz_with_pickle(path: Path, payload: bytes, member: str = "positions_3d") -> Path:
    """An npz whose member is an object-array .npy header followed by `payload`, as np.save writes it."""
    buffer = io.BytesIO()
    npy_format.write_array_header_1_0(buffer, npy_format.header_data_from_array_1_0(_wrap(None)))
    buffer.write(payload)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{member}.npy", buffer.getvalue())
    return path


class _Reduces:
    """Pickles as whatever `__reduce__` value it is given: builds crafted streams with the real pickler."""

    def __init__(self, *reduce_value):
        self.reduce_value = reduce_value

    def __reduce__(self):
        return self.reduce_value


@pytest.mark.parametrize("writer", [np.savez, np.savez_compressed])
def test_numpy_writers_round_trip(tmp_path, writer):
    poses = _poses()
    writer(tmp_path / "data.npz", positions_3d=poses, plain=np.arange(3.0))
    _assert_same(read_pickled_member(tmp_path / "data.npz", "positions_3d"), poses)
    np.testing.assert_array_equal(read_pickled_member(tmp_path / "data.npz", "plain"), np.arange(3.0))


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_every_protocol_numpy_can_write_round_trips(tmp_path, protocol):
    poses = _poses()
    poses["S1"]["same object twice"] = poses["S1"]["Walking"]  # a memo GET of a built array
    payload = pickle.dumps(_wrap(poses), protocol=protocol)
    loaded = read_pickled_member(_npz_with_pickle(tmp_path / "p.npz", payload), "positions_3d")
    _assert_same(loaded, poses)
    assert loaded["S1"]["same object twice"] is loaded["S1"]["Walking"]


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_plain_values_and_outer_arrays_of_any_shape(tmp_path, protocol):
    value = {
        "ints": [0, -1, 255, 65536, -(2**40), 10**30],
        "float": 0.5,
        "bytes": b"",
        "text": "Ü",
        "none": None,
    }
    value["flags"] = (True, False)
    value["scalar"] = np.float32(1.5)
    loaded = read_pickled_member(
        _npz_with_pickle(tmp_path / "v.npz", pickle.dumps(_wrap(value), protocol=protocol)), "positions_3d"
    )
    assert loaded == value and type(loaded["scalar"]) is np.float32

    outer = np.empty((2,), dtype=object)
    outer[0], outer[1] = [1, 2], {"a": np.ones(2)}
    loaded = read_pickled_member(
        _npz_with_pickle(tmp_path / "o.npz", pickle.dumps(outer, protocol=protocol)), "positions_3d"
    )
    assert loaded.dtype == object and loaded.shape == (2,) and loaded[0] == [1, 2]
    np.testing.assert_array_equal(loaded[1]["a"], np.ones(2))


@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_a_global_outside_the_allow_list_is_refused_and_never_runs(tmp_path, protocol):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_wrap({"S1": _Reduces(os.system, (f"touch {marker}",))}), protocol=protocol)
    with pytest.raises(ValueError) as error:
        read_pickled_member(_npz_with_pickle(tmp_path / "evil.npz", payload), "positions_3d")
    message = str(error.value)
    assert message.startswith(f"{tmp_path / 'evil.npz'}: cannot read 'positions_3d' safely")
    assert f"refusing to load {os.system.__module__}.system" in message  # posix.system on Linux
    assert not marker.exists()

    # The same name spelt as a module user would: the message names os.system.
    crafted = b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00true\x85R."
    with pytest.raises(ValueError, match=r"evil2\.npz: .*refusing to load os\.system"):
        read_pickled_member(_npz_with_pickle(tmp_path / "evil2.npz", crafted), "positions_3d")


@pytest.mark.parametrize(
    ("inside", "message"),
    [
        (np.array([1, "a"], dtype=object), "object arrays are read only as the outermost wrapper"),
        (np.zeros(2, dtype=[("x", "f4"), ("y", "i4")]), "unsupported dtype 'V8'"),
        (np.array(["ab"]), "unsupported dtype 'U2'"),
        (np.array(["2020-01-01"], dtype="M8[D]"), "unsupported dtype 'M8'"),
    ],
)
def test_non_numeric_arrays_inside_are_refused(tmp_path, inside, message):
    for protocol in (2, 4, 5):
        path = _npz_with_pickle(
            tmp_path / "x.npz", pickle.dumps(_wrap({"S1": {"A": inside}}), protocol=protocol)
        )
        with pytest.raises(ValueError, match=message):
            read_pickled_member(path, "positions_3d")


def test_truncated_and_malformed_streams_are_value_errors(tmp_path):
    payload = pickle.dumps(_wrap(_poses()), protocol=4)
    for cut in range(0, len(payload) - 1, 97):
        with pytest.raises(ValueError, match=r"t\.npz: cannot read 'positions_3d' safely"):
            read_pickled_member(_npz_with_pickle(tmp_path / "t.npz", payload[:cut]), "positions_3d")

    cases = {
        b"\x80\x04\xff.": r"opcode b'\\xff' unknown",  # not a pickle opcode at all
        b"\x80\x02N)\x81.": r"pickle opcode NEWOBJ at byte 4: not supported",  # a real one numpy never writes
        b"\x80\x02h\x05.": r"memo index 5 is absent",
        b"\x80\x02)R.": r"opcode REDUCE .*stack underflow",
        b"N.": r"no PROTO opcode",
        b"\x80\x06N.": r"pickle protocol 6",
        b"\x80\x02NN.": r"values are left on the stack",
        b"\x80\x02" + b"(" * 1001 + b".": r"more than 1000 nested marks",
        b"\x80\x02](u.": r"SETITEM needs a dict and key-value pairs, got a list",
        b"\x80\x02}(]Nu.": r"a list cannot be a dict key",
    }
    for payload, message in cases.items():
        with pytest.raises(ValueError, match=message):
            read_pickled_member(_npz_with_pickle(tmp_path / "m.npz", payload), "positions_3d")


def test_crafted_array_states_are_checked(tmp_path):
    f8 = np.dtype("f8")
    bad = {
        "byte count": (_RECONSTRUCT, (np.ndarray, (0,), b"b"), (1, (3,), f8, False, b"\0" * 5)),
        "negative shape": (_RECONSTRUCT, (np.ndarray, (0,), b"b"), (1, (-1,), f8, False, b"")),
        "unbuilt": (_RECONSTRUCT, (np.ndarray, (0,), b"b")),
        "state version": (_RECONSTRUCT, (np.ndarray, (0,), b"b"), (2, (1,), f8, False, b"\0" * 8)),
        "list data": (_RECONSTRUCT, (np.ndarray, (0,), b"b"), (1, (1,), f8, False, [1.0])),
    }
    messages = {
        "byte count": r"array of shape \(3,\) and dtype float64 needs 24 bytes, has 5",
        "negative shape": r"array shape \(-1,\) is not a tuple of sizes",
        "unbuilt": r"unbuilt array",
        "state version": r"unexpected ndarray state",
        "list data": r"array data is a list, not bytes",
    }
    for name, reduce_value in bad.items():
        payload = pickle.dumps(_wrap({"A": _Reduces(*reduce_value)}), protocol=3)
        with pytest.raises(ValueError, match=messages[name]):
            read_pickled_member(_npz_with_pickle(tmp_path / f"{name}.npz", payload), "positions_3d")


def test_the_opcode_cap_holds(tmp_path, monkeypatch):
    payload = pickle.dumps(_wrap(_poses()), protocol=4)
    path = _npz_with_pickle(tmp_path / "big.npz", payload)
    monkeypatch.setattr(pickle_arrays, "MAX_OPCODES", 50)
    with pytest.raises(ValueError, match="more than 50 opcodes"):
        read_pickled_member(path, "positions_3d")


def test_python_pickle_is_never_used(tmp_path, monkeypatch):
    # In the code (docstrings may describe the danger): no pickle import, no unpickler, no np.load,
    # no dynamic import.
    banned = {"pickle", "_pickle", "Unpickler", "loads", "load", "allow_pickle", "importlib", "__import__"}
    for module in (safe_npz, pickle_arrays):
        names = set()
        for node in ast.walk(ast.parse(Path(module.__file__).read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                names.add(node.module)
            elif isinstance(node, ast.Name):
                names.add(node.id)
            elif isinstance(node, ast.Attribute):
                names.add(node.attr)
            elif isinstance(node, ast.keyword):
                names.add(node.arg)
        assert names & banned == set(), module.__name__

    # And at run time: with every unpickling entry point broken, the file still reads.
    def refuse(*args, **kwargs):
        raise AssertionError("pickle was used")

    for name in ("load", "loads", "Unpickler", "_Unpickler", "_load", "_loads"):
        monkeypatch.setattr(pickle, name, refuse)
    poses = _poses()
    np.savez(tmp_path / "data.npz", positions_3d=poses)
    _assert_same(read_pickled_member(tmp_path / "data.npz", "positions_3d"), poses)
