"""Silencing pybullet's C-level URDF warnings without losing the process's own output."""

from __future__ import annotations

import ctypes
import os

import pytest

from stages.synthetic.quiet import c_stdout_silenced


def test_c_stdout_silenced_drops_what_c_and_fd_1_print_and_restores_stdout(capfd):
    libc = ctypes.CDLL(None)
    print("before", flush=True)
    with c_stdout_silenced():
        os.write(1, b"fd write\n")
        libc.printf(b"C printf\n")  # stays in C's buffer unless flushed inside
    print("after", flush=True)
    libc.printf(b"C after\n")
    libc.fflush(None)
    out = capfd.readouterr().out
    assert "before" in out and "after" in out and "C after" in out
    assert "fd write" not in out and "C printf" not in out


def test_loading_a_figure_prints_no_urdf_warnings(capfd):
    pb = pytest.importorskip("pybullet")
    from stages.synthetic.figures import load_figure

    client = pb.connect(pb.DIRECT)
    try:
        load_figure(client, "humanoid")
    finally:
        pb.disconnect(client)
    assert "urdfdom" not in capfd.readouterr().out
