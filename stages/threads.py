"""How many torch intra-op threads a run uses: one rule for training, evaluation and the demo.

One by default, whatever the machine. torch's CPU reductions (sums, convolution weight
gradients) split their work by the thread count, so another count rounds differently:
with a fixed default, the same command and seed give the same losses and weights on every
machine and under any OMP_NUM_THREADS (issue 13, item 14). One thread is also what does
not oversubscribe a small machine (item 15): on 2 busy cores a 2-thread fit ran 10 steps in
34 s against 7.7 s with 1 thread, because OpenMP threads that wait for a core held by the
loader worker or another process slow every parallel kernel down. `--threads N` opts into
more threads (same bits at that N, other rounding than at 1).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from threadpoolctl import threadpool_limits

from stages.errors import ConfigError


def check_threads(threads: int | None) -> None:
    """None (choose) or a thread count >= 1; anything else is refused by name."""
    if threads is not None and (isinstance(threads, bool) or threads < 1):
        raise ConfigError(f"--threads must be >= 1 (or left out to choose), got {threads}")


DEFAULT_THREADS = 1


def choose_threads(requested: int | None) -> int:
    """The user's count when given, else DEFAULT_THREADS (the same on every machine)."""
    check_threads(requested)
    return DEFAULT_THREADS if requested is None else requested


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with `threads` intra-op threads, then restore the previous count (a
    library call must not leave the caller's process changed)."""
    check_threads(threads)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Run the block with numpy's BLAS (OpenBLAS, MKL) on one thread, then restore it.

    The torch pin above does not reach numpy's BLAS, which splits a least-squares solve or
    a large product by its own thread count: the linear regressor's weights differed in
    the 16th significant digit between 1 and 2 BLAS threads, and its scores in the 14th.
    Evaluation's numpy work is small (thousands of samples), so one thread costs nothing
    and makes the bits independent of the machine's cores and of OPENBLAS_NUM_THREADS.
    """
    with threadpool_limits(limits=1, user_api="blas"):
        yield
