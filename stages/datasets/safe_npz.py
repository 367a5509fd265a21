"""Read a pickled object member of an .npz without running code from the file.

VideoPose3D's data_3d_h36m.npz stores a dict of numpy arrays as a pickled object array.
Loading that with numpy's object support would hand the bytes to Python's pickle, and a
crafted file would run any code it names. Python's pickle is never used here: this module
parses the .npy header with numpy, and the file's pickle is interpreted by a small opcode
reader (`stages.datasets.pickle_arrays`) that builds only containers (dict, list, tuple),
strings, numbers and numeric numpy arrays. A file that names anything else, or uses any
other opcode, is refused; nothing it names is imported or called.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import numpy.lib.format as npy_format

from stages.datasets.pickle_arrays import load_array_pickle


def read_pickled_member(path: Path, member: str) -> Any:
    """The object stored as `member` (e.g. 'positions_3d') of the npz at `path`.

    Raises ValueError naming the file for a non-zip file, a missing member, a bad header,
    or a pickle that holds anything but containers, numbers and numeric numpy arrays.
    """
    name = f"{member}.npy"
    try:
        with zipfile.ZipFile(path) as archive:
            if name not in archive.namelist():
                members = ", ".join(n.removesuffix(".npy") for n in archive.namelist())
                raise ValueError(f"{path}: no array '{member}' (it has: {members})")
            data = io.BytesIO(archive.read(name))
    except (OSError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: not a readable npz file ({exc})") from None
    try:
        version = npy_format.read_magic(data)
        if version == (1, 0):
            shape, fortran, dtype = npy_format.read_array_header_1_0(data)
        else:
            shape, fortran, dtype = npy_format.read_array_header_2_0(data)
        if not dtype.hasobject:
            return _plain_array(data, shape, fortran, dtype)
        value = load_array_pickle(data)
    except (ValueError, EOFError) as exc:
        raise ValueError(f"{path}: cannot read '{member}' safely ({exc})") from None
    return (
        value.item() if isinstance(value, np.ndarray) and value.dtype.hasobject and value.ndim == 0 else value
    )


def _plain_array(data: io.BytesIO, shape: tuple[int, ...], fortran: bool, dtype: np.dtype) -> np.ndarray:
    """A non-object array from the bytes after its header."""
    count = int(np.prod(shape)) if shape else 1
    array = np.frombuffer(data.read(count * dtype.itemsize), dtype=dtype, count=count)
    return array.reshape(shape, order="F" if fortran else "C")
