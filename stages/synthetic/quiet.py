"""Silence what C code prints straight to the process's stdout (pybullet's URDF warnings).

pybullet prints an 'no axis element for Joint' warning per spherical joint of the
humanoid URDF (pybullet then uses the default axis, as intended), 16 lines in every
process that loads it: noise in every dask worker's log and in every CLI run.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from collections.abc import Iterator


def _flush_c_stdio() -> None:
    # C stdio buffers its output when stdout is not a terminal; what is still buffered
    # when fd 1 is restored would be printed after all.
    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):  # no C library to reach (e.g. Windows): nothing to flush
        pass


@contextlib.contextmanager
def c_stdout_silenced() -> Iterator[None]:
    """Send file descriptor 1 to the null device meanwhile.

    Whatever the process writes to its stdout inside the block is dropped, Python's
    prints included (they are flushed before it), so keep the block to one C call.
    """
    sys.stdout.flush()
    _flush_c_stdio()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        _flush_c_stdio()
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)
