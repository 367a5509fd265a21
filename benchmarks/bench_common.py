"""What the benchmark scripts share: timing, tables, JSON, a bare dask cluster's cost.

Light on purpose (numpy and dask only): dask's worker processes import the running
script's module again, and a heavy import there would be timed as cluster start-up.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def machine_info(**extra: Any) -> dict[str, Any]:
    """Cores, load and platform of this machine, plus what a benchmark adds (library versions)."""
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average_1_5_15": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        **extra,
    }


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    print(f"\n== {title}")
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        # first column (labels) left-aligned, numbers right-aligned
        padded = [v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(row, widths, strict=True))]
        print("  ".join(padded))


def print_notes(notes: Sequence[str]) -> None:
    for note in notes:
        print(f"  note: {note}")


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """(fn(), seconds it took)."""
    tic = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - tic


def time_cluster_start(workers: int) -> float:
    """Seconds to start and close a LocalCluster like `run_dask` does, with no work."""
    from dask.distributed import Client, LocalCluster

    tic = time.perf_counter()
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
    with Client(cluster):
        pass
    cluster.close()
    return time.perf_counter() - tic


def json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def write_report(
    args: argparse.Namespace,
    date: str,
    machine: dict[str, Any],
    started: float,
    config: dict[str, Any],
    body: dict[str, Any],
) -> dict[str, Any]:
    """Write args.out: date, runtime, machine, the config (the script's args first), then body."""
    runtime = time.perf_counter() - started
    arguments = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    report = {
        "date": date,
        "runtime_s": runtime,
        "machine": machine,
        "config": {"args": arguments, **config},
        **body,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=json_default))
    print(f"\ntotal runtime {runtime:.0f} s; results in {args.out}")
    return report
