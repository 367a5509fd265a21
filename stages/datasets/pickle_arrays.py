"""A reader of the pickle that numpy writes for an object array of dicts of numeric arrays.

Python's pickle machinery executes a file: every GLOBAL it meets is imported and every
REDUCE calls it. This module never uses it. `pickletools.genops` (the standard library's
disassembler, which only parses bytes) yields the opcodes with their decoded arguments, and
a small stack machine here gives each supported opcode its meaning:

- dict, list, tuple, str, bytes, int, float, bool and None, the memo, MARK, FRAME, PROTO,
  STOP: protocols 2 to 5, in band only;
- GLOBAL and STACK_GLOBAL push an inert name, and only for the few names numpy's arrays and
  dtypes pickle to (`_GLOBALS`); any other name is refused before anything else happens;
- REDUCE and BUILD on those names are interpreted here: a dtype is rebuilt from its type
  string and byte order, an array from its shape, dtype, order and raw bytes
  (np.frombuffer(...).copy()). Only bool, int, uint, float and complex dtypes are built;
  an object array is accepted only as the outermost value (the 0-d wrapper np.save writes
  around a dict), never inside it.

Everything else (other opcodes, names, dtypes, malformed or truncated streams) is a
ValueError that names what was refused. Streams are capped at `MAX_OPCODES` opcodes and
`MAX_MARK_DEPTH` open marks, which also bounds the stack and the memo.
"""

from __future__ import annotations

import math
import pickletools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np

# The real data_3d_h36m.npz is about 60 opcodes per array and a few hundred arrays; the cap only
# stops a crafted file from filling memory with empty containers, one per byte.
MAX_OPCODES = 1_000_000
# numpy's pickles nest MARKs four deep (outer state, dict items, array state, dtype state).
MAX_MARK_DEPTH = 1_000

# (module, name) -> what REDUCE does with it. Nothing is imported: the pair only selects a branch.
_GLOBALS: dict[tuple[str, str], str] = {
    ("numpy.core.multiarray", "_reconstruct"): "reconstruct",  # numpy 1.x
    ("numpy._core.multiarray", "_reconstruct"): "reconstruct",  # numpy 2.x
    ("numpy", "ndarray"): "ndarray",
    ("numpy", "dtype"): "dtype",
    ("numpy.core.multiarray", "scalar"): "scalar",
    ("numpy._core.multiarray", "scalar"): "scalar",
    # protocol 5: contiguous arrays pickle as _frombuffer(bytearray, dtype, shape, order)
    ("numpy.core.numeric", "_frombuffer"): "frombuffer",
    ("numpy._core.numeric", "_frombuffer"): "frombuffer",
    # protocol 2 has no bytes opcode: pickle writes bytes as _codecs.encode(str, 'latin1'), b'' as bytes()
    ("_codecs", "encode"): "encode",
    ("__builtin__", "bytes"): "bytes",
}

# Type strings of the numeric dtypes: bool (b1), int, uint, float, complex of any width.
_NUMERIC_TYPESTR = re.compile(r"[biufc]\d{1,2}")
_OBJECT_TYPESTRS = ("O8", "O4")  # the outer wrapper's dtype on 64- and 32-bit builds

_LITERALS = {
    "BININT",
    "BININT1",
    "BININT2",
    "LONG1",
    "BINFLOAT",
    "BINUNICODE",
    "SHORT_BINUNICODE",
    "BINUNICODE8",
    "SHORT_BINBYTES",
    "BINBYTES",
    "BINBYTES8",
    "BYTEARRAY8",
}
_CONSTANTS: dict[str, Any] = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False}


@dataclass(frozen=True)
class _Global:
    """An inert name from GLOBAL/STACK_GLOBAL; `kind` selects what REDUCE does with it."""

    module: str
    name: str
    kind: str


@dataclass(eq=False)
class _Unbuilt:
    """An ndarray or dtype made by REDUCE that waits for BUILD to give it its state."""

    kind: str  # "ndarray" or "dtype"
    typestr: str = ""  # dtype only, e.g. 'f8'
    outermost: bool = False  # ndarray only: made with nothing else on the stack, so it is the result
    memo_keys: list[int] = field(default_factory=list)  # memo entries to point at the built value


class _Consumed:
    """Stands in the memo for raw array bytes once copied into an array, so they can be freed."""


def load_array_pickle(stream: IO[bytes]) -> Any:
    """The value pickled in `stream` (the bytes after a .npy header), built without unpickling.

    For np.save of an object array this is that array, e.g. shape () holding
    {subject: {action: (F, 32, 3) float array}}. Raises ValueError for anything else.
    """
    machine = _Machine()
    start = stream.tell()  # positions in messages count from the pickle's first byte
    ops = pickletools.genops(stream)
    for count in range(MAX_OPCODES + 1):
        try:
            opcode, arg, pos = next(ops)
        except StopIteration:
            break
        except ValueError as exc:  # genops: truncated data, unknown opcode byte, bad argument
            raise ValueError(f"malformed pickle: {exc}") from None
        if count == MAX_OPCODES:
            raise ValueError(f"pickle has more than {MAX_OPCODES} opcodes")
        try:
            if opcode.name == "STOP":
                return machine.stop()
            machine.step(opcode.name, arg, count)
        except (ValueError, TypeError, IndexError, KeyError, OverflowError) as exc:
            where = "" if pos is None else f" at byte {pos - start}"
            raise ValueError(f"pickle opcode {opcode.name}{where}: {exc}") from None
    raise ValueError("malformed pickle: it ends without STOP")


class _Machine:
    """The stack, marks and memo of one pickle being read; `step` runs one opcode."""

    def __init__(self) -> None:
        self.stack: list[Any] = []
        self.marks: list[int] = []
        self.memo: dict[int, Any] = {}
        self.raw_keys: dict[int, list[int]] = {}  # id(bytes in the memo) -> its memo keys
        self.ops: dict[str, Callable[[Any], None]] = {
            "PROTO": self.proto,
            "FRAME": lambda arg: None,  # genops reads frames transparently
            "MARK": self.mark,
            "EMPTY_LIST": lambda arg: self.stack.append([]),
            "EMPTY_DICT": lambda arg: self.stack.append({}),
            "EMPTY_TUPLE": lambda arg: self.stack.append(()),
            "TUPLE": lambda arg: self.stack.append(self.tuple_of(self.pop_mark())),
            "TUPLE1": lambda arg: self.stack.append(self.tuple_of(self.pop_n(1))),
            "TUPLE2": lambda arg: self.stack.append(self.tuple_of(self.pop_n(2))),
            "TUPLE3": lambda arg: self.stack.append(self.tuple_of(self.pop_n(3))),
            "APPEND": lambda arg: self.append(self.pop_n(1)),
            "APPENDS": lambda arg: self.append(self.pop_mark()),
            "SETITEM": lambda arg: self.setitems(self.pop_n(2)),
            "SETITEMS": lambda arg: self.setitems(self.pop_mark()),
            "PUT": self.put,
            "BINPUT": self.put,
            "LONG_BINPUT": self.put,
            "MEMOIZE": lambda arg: self.put(len(self.memo)),
            "GET": self.get,
            "BINGET": self.get,
            "LONG_BINGET": self.get,
            "GLOBAL": lambda arg: self.stack.append(_global(*str(arg).split(" ", 1))),
            "STACK_GLOBAL": self.stack_global,
            "REDUCE": self.reduce,
            "BUILD": self.build,
        }

    def step(self, name: str, arg: Any, index: int) -> None:
        if index == 0 and name != "PROTO":
            raise ValueError("no PROTO opcode: only pickle protocols 2 to 5 are read")
        if name in _LITERALS:
            self.stack.append(arg)
        elif name in _CONSTANTS:
            self.stack.append(_CONSTANTS[name])
        elif name in self.ops:
            self.ops[name](arg)
        else:
            raise ValueError("not supported (only what numpy writes for arrays of numbers is read)")

    def stop(self) -> Any:
        value = self.pop_n(1)[0]
        if self.stack or self.marks:
            raise ValueError("values are left on the stack at STOP")
        _check_storable(value, tuple_item=False)
        return value

    def proto(self, arg: int) -> None:
        if not 2 <= arg <= 5:
            raise ValueError(f"pickle protocol {arg}: only 2 to 5 are read")

    def mark(self, arg: None) -> None:
        if len(self.marks) >= MAX_MARK_DEPTH:
            raise ValueError(f"more than {MAX_MARK_DEPTH} nested marks")
        self.marks.append(len(self.stack))

    def pop_mark(self) -> list[Any]:
        if not self.marks:
            raise ValueError("no MARK to pop to")
        start = self.marks.pop()
        items = self.stack[start:]
        del self.stack[start:]
        return items

    def pop_n(self, n: int) -> list[Any]:
        # Items below the innermost mark belong to an outer container.
        if len(self.stack) - (self.marks[-1] if self.marks else 0) < n:
            raise ValueError("stack underflow")
        items = self.stack[-n:]
        del self.stack[-n:]
        return items

    def top(self) -> Any:
        if len(self.stack) <= (self.marks[-1] if self.marks else 0):
            raise ValueError("stack underflow")
        return self.stack[-1]

    def tuple_of(self, items: list[Any]) -> tuple[Any, ...]:
        for item in items:
            _check_storable(item, tuple_item=True)
        return tuple(items)

    def append(self, items: list[Any]) -> None:
        target = self.top()
        if type(target) is not list:
            raise ValueError(f"APPEND to a {type(target).__name__}, not a list")
        for item in items:
            _check_storable(item, tuple_item=False)
        target.extend(items)

    def setitems(self, items: list[Any]) -> None:
        target = self.top()
        if type(target) is not dict or len(items) % 2:
            raise ValueError(f"SETITEM needs a dict and key-value pairs, got a {type(target).__name__}")
        for key, value in zip(items[::2], items[1::2], strict=True):
            _check_storable(key, tuple_item=False)
            _check_storable(value, tuple_item=False)
            try:
                target[key] = value
            except TypeError:  # an unhashable key, e.g. a list
                raise ValueError(f"a {type(key).__name__} cannot be a dict key") from None

    def put(self, key: int) -> None:
        value = self.top()
        self.memo[key] = value
        if isinstance(value, _Unbuilt):
            value.memo_keys.append(key)
        elif isinstance(value, (bytes, bytearray)):
            self.raw_keys.setdefault(id(value), []).append(key)

    def get(self, key: int) -> None:
        if key not in self.memo:
            raise ValueError(f"memo index {key} is absent")
        value = self.memo[key]
        if isinstance(value, _Consumed):
            raise ValueError(f"memo index {key}: raw array bytes used twice, which numpy never writes")
        self.stack.append(value)

    def stack_global(self, arg: None) -> None:
        module, name = self.pop_n(2)
        if type(module) is not str or type(name) is not str:
            raise ValueError("STACK_GLOBAL needs two strings")
        self.stack.append(_global(module, name))

    def reduce(self, arg: None) -> None:
        func, args = self.pop_n(2)
        if not isinstance(func, _Global) or type(args) is not tuple:
            raise ValueError(f"REDUCE of a {type(func).__name__}: only numpy's names can be called")
        if func.kind == "reconstruct":
            # _reconstruct(ndarray, (0,), b'b'): an empty array that BUILD fills in
            if len(args) != 3 or not (isinstance(args[0], _Global) and args[0].kind == "ndarray"):
                raise ValueError(f"unexpected arguments to {func.module}.{func.name}")
            self.stack.append(_Unbuilt("ndarray", outermost=not self.stack and not self.marks))
        elif func.kind == "dtype":
            # dtype(typestr, align, copy); the byte order comes with BUILD
            if len(args) != 3 or type(args[0]) is not str:
                raise ValueError("unexpected arguments to numpy.dtype")
            if not (_NUMERIC_TYPESTR.fullmatch(args[0]) or args[0] in _OBJECT_TYPESTRS):
                raise ValueError(
                    f"unsupported dtype '{args[0]}': only bool, int, uint, float and complex arrays are read"
                )
            self.stack.append(_Unbuilt("dtype", typestr=args[0]))
        elif func.kind == "scalar":
            if len(args) != 2 or not isinstance(args[0], np.dtype) or type(args[1]) is not bytes:
                raise ValueError("unsupported numpy scalar: only numeric scalars are read")
            self.stack.append(self.numeric_array(args[1], args[0], (), False)[()])
        elif func.kind == "frombuffer":
            if len(args) != 4 or args[3] not in ("C", "F"):
                raise ValueError(f"unexpected arguments to {func.module}.{func.name}")
            buffer, dtype, shape, order = args
            self.stack.append(self.numeric_array(buffer, dtype, _shape(shape), order == "F"))
        elif func.kind == "encode":
            if args[1:] != ("latin1",) or type(args[0]) is not str:
                raise ValueError("_codecs.encode: only (str, 'latin1') is read")
            self.stack.append(args[0].encode("latin-1"))
        elif func.kind == "bytes" and args == ():
            self.stack.append(b"")
        else:
            raise ValueError(f"{func.module}.{func.name} cannot be called with these arguments")

    def build(self, arg: None) -> None:
        (state,) = self.pop_n(1)
        target = self.top()
        if not isinstance(target, _Unbuilt) or type(state) is not tuple:
            raise ValueError(f"BUILD of a {type(target).__name__}: only numpy arrays and dtypes are built")
        built = _dtype(target.typestr, state) if target.kind == "dtype" else self.ndarray(target, state)
        self.stack[-1] = built
        for key in target.memo_keys:
            if self.memo.get(key) is target:
                self.memo[key] = built

    def ndarray(self, target: _Unbuilt, state: tuple[Any, ...]) -> np.ndarray:
        """An array from numpy's state (version 1, shape, dtype, is_fortran, raw bytes or item list)."""
        if len(state) != 5 or state[0] != 1 or not isinstance(state[2], np.dtype):
            raise ValueError("unexpected ndarray state: numpy writes (1, shape, dtype, is_fortran, data)")
        _, shape, dtype, fortran, data = state
        shape = _shape(shape)
        if fortran not in (True, False):
            raise ValueError("ndarray state: is_fortran is not a bool")
        if dtype.kind != "O":
            return self.numeric_array(data, dtype, shape, bool(fortran))
        if not target.outermost:
            raise ValueError("object arrays are read only as the outermost wrapper, not inside it")
        if type(data) is not list or len(data) != math.prod(shape):
            raise ValueError(f"object array of shape {shape} needs a list of {math.prod(shape)} items")
        array = np.empty(len(data), dtype=object)
        for i, item in enumerate(data):  # item by item: a list item must stay one element
            array[i] = item
        return array.reshape(shape, order="F" if fortran else "C")

    def numeric_array(self, data: Any, dtype: Any, shape: tuple[int, ...], fortran: bool) -> np.ndarray:
        """`shape` array of numeric `dtype` copied from `data`, the raw bytes in C or Fortran order."""
        if not isinstance(dtype, np.dtype) or dtype.kind not in "biufc":
            raise ValueError(f"unsupported dtype {dtype}: only bool, int, uint, float and complex are read")
        if type(data) not in (bytes, bytearray):
            raise ValueError(f"array data is a {type(data).__name__}, not bytes")
        expected = math.prod(shape) * dtype.itemsize
        if len(data) != expected:
            raise ValueError(
                f"array of shape {shape} and dtype {dtype} needs {expected} bytes, has {len(data)}"
            )
        array = np.frombuffer(data, dtype=dtype).copy().reshape(shape, order="F" if fortran else "C")
        # The memo would keep the raw bytes alive until the end: let go of them now they are copied.
        for key in self.raw_keys.pop(id(data), []):
            if self.memo.get(key) is data:
                self.memo[key] = _Consumed()
        return array


def _global(module: str, name: str) -> _Global:
    """The inert marker for an allowed name; any other name is refused without being imported."""
    kind = _GLOBALS.get((module, name))
    if kind is None:
        raise ValueError(f"refusing to load {module}.{name}: only numpy arrays are allowed")
    return _Global(module, name, kind)


def _dtype(typestr: str, state: tuple[Any, ...]) -> np.dtype:
    """A dtype from its type string, e.g. 'f8', and numpy's state (3, byteorder, None, None, None, ...)."""
    if len(state) != 8 or state[0] != 3 or state[2:5] != (None, None, None):
        raise ValueError(f"unsupported dtype '{typestr}' state: only plain numeric dtypes are read")
    byteorder = state[1]
    if byteorder not in ("<", ">", "|", "="):
        raise ValueError(f"dtype '{typestr}': unknown byte order {byteorder!r}")
    try:
        dtype = np.dtype(object) if typestr in _OBJECT_TYPESTRS else np.dtype(typestr)
    except TypeError:  # e.g. 'i3', or 'f16' where there is no float128
        raise ValueError(f"unsupported dtype '{typestr}' on this machine") from None
    # Elsize, alignment and flags only matter for flexible and structured dtypes, refused above.
    return dtype.newbyteorder(byteorder) if byteorder in "<>" else dtype


def _shape(shape: Any) -> tuple[int, ...]:
    if type(shape) is not tuple or not all(type(n) is int and n >= 0 for n in shape):
        raise ValueError(f"array shape {shape!r} is not a tuple of sizes")
    return shape


def _check_storable(value: Any, tuple_item: bool) -> None:
    """Refuse a half-built array or dtype in a container; names may sit only in argument tuples."""
    if isinstance(value, _Unbuilt) or (isinstance(value, _Global) and not tuple_item):
        raise ValueError("a numpy name or unbuilt array is used as a value")
