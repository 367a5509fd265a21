"""The quality benchmark's trainings, run a few at a time in worker processes.

Every training runs at one torch thread (the trainer's default, `stages.threads`), so its
losses and weights are the same bits whether it runs alone or beside another job: the
order and the number of workers change the minutes, never the numbers. On 2 cores a
one-thread training alone leaves most of the second core idle (its data loader process
used about 30% of a core beside a bound); two side by side keep both cores busy.

A job writes its model into the benchmark's work folder and returns its minutes; the
benchmark then loads the models and scores them in its own process, in its own order.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from stages.evaluation.supervised import SupervisedLosses, train_supervised
from stages.keypoints.config import StageTwoConfig
from stages.keypoints.training import FitJob, fit
from stages.threads import torch_threads

BOUND_MODEL = "model"
"""The folder of a bound job's saved model, inside its output folder."""


@dataclass(frozen=True)
class TrainingJob:
    """One model of the benchmark: ours (self-supervised, a `fit` run directory) or the
    supervised bound (trained on the joints, saved with save_pretrained)."""

    name: str
    """Unique in one benchmark run, e.g. 'humanoid/ours-seed0'."""
    train: Path
    """The train cache."""
    out: Path
    """ours: the run directory; bound: a folder that gets BOUND_MODEL."""
    config: StageTwoConfig
    bound_losses: SupervisedLosses | None = None
    """None: ours; else the bound's losses (config.num_keypoints must be the joint count)."""

    @property
    def steps(self) -> int:
        return self.config.steps

    @property
    def longest_first_key(self) -> tuple[bool, int]:
        # A bound step costs about as much as ours' (24^3 grid, no decoder), and the bound
        # trains several times more steps: start the longest jobs first so that the short
        # ones fill the other worker's time instead of trailing at the end.
        return (self.bound_losses is None, -self.steps)


def bound_model_dir(out: Path) -> Path:
    return Path(out) / BOUND_MODEL


def run_training(job: TrainingJob) -> float:
    """Train one job at one thread; its minutes."""
    tic = time.perf_counter()
    with torch_threads(1):
        if job.bound_losses is None:
            fit(FitJob((job.train,), job.out, job.config, threads=1))
        else:
            model = train_supervised(job.config, [job.train], losses=job.bound_losses)
            # Written beside and renamed into place: a killed job leaves no model that
            # looks complete.
            final = bound_model_dir(job.out)
            partial = final.with_name(final.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            model.save_pretrained(partial, safe_serialization=True)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(partial, final)
    return (time.perf_counter() - tic) / 60


def train_all(jobs: Sequence[TrainingJob], workers: int, progress: bool = True) -> dict[str, float]:
    """Run `jobs`, longest first, `workers` at a time; minutes per job name.

    workers 1 trains them one after another in this process. Otherwise each runs in a
    spawned worker process (a fresh interpreter: no forked torch state), and the first
    error of any job is raised here once the others have finished. With `progress`, a bar
    on stderr counts the finished models and a line names each one with its minutes: a
    bound trains for most of an hour, and the workers print nothing of their own."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    names = [job.name for job in jobs]
    if len(set(names)) != len(names):
        raise ValueError(f"job names must be unique, got {names}")
    ordered = sorted(jobs, key=lambda job: job.longest_first_key)
    minutes: dict[str, float] = {}
    errors: list[BaseException] = []
    bar = tqdm(total=len(ordered), desc="training", unit="model", disable=not progress, file=sys.stderr)
    with bar:

        def finished(name: str, spent: float) -> None:
            minutes[name] = spent
            bar.update()
            if progress:
                bar.write(f"trained {name} in {spent:.1f} min", file=sys.stderr)

        if workers == 1:
            for job in ordered:
                finished(job.name, run_training(job))
            return minutes
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures: dict[Future[float], str] = {pool.submit(run_training, job): job.name for job in ordered}
            for future in as_completed(futures):
                error = future.exception()
                if error is not None:
                    errors.append(error)
                else:
                    finished(futures[future], future.result())
    if errors:
        raise errors[0]
    return {job.name: minutes[job.name] for job in ordered}
