"""How many torch intra-op threads a run uses: one rule for training, evaluation and the demo.

torch's default is one thread per core, plus one process per data-loader worker. On a
2-core machine that is also doing other work, a 2-thread fit ran 10 steps in 34 s against
7.7 s with 1 thread (issue 13, item 15): OpenMP threads that spin waiting for a core the
loader worker or another process holds slow every parallel kernel down to the slowest one.
So by default the torch threads and the loader workers together take no more than the
cores this process may run on (its affinity mask, not the machine's core count, so a
container or `taskset` is respected).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from stages.errors import ConfigError


def available_cores() -> int:
    """Cores this process may run on (sched_getaffinity where the OS has it)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def check_threads(threads: int | None) -> None:
    """None (choose) or a thread count >= 1; anything else is refused by name."""
    if threads is not None and (isinstance(threads, bool) or threads < 1):
        raise ConfigError(f"--threads must be >= 1 (or left out to choose), got {threads}")


def choose_threads(requested: int | None, loader_workers: int = 0, cores: int | None = None) -> int:
    """The user's count when given; else the cores left after the loader workers, at least 1."""
    check_threads(requested)
    if requested is not None:
        return requested
    return max(1, (cores or available_cores()) - loader_workers)


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
