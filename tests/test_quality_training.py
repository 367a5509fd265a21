"""The quality benchmark's trainings in worker processes (benchmarks/quality_training.py) and its caches."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("pybullet")

from cache_schema import CacheReader  # noqa: E402
from stages.evaluation.supervised import SupervisedLosses  # noqa: E402
from stages.keypoints.checkpoint import latest_checkpoint, load_model  # noqa: E402
from tests.fixtures.stage_two import TINY_STAGE_TWO  # noqa: E402
from tests.fixtures.synthetic_caches import render_humanoid_cache  # noqa: E402

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def quality_training(monkeypatch):
    # On sys.path, as the benchmark has it, so that spawned workers can import it too.
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import quality_training

    return quality_training


@pytest.fixture(scope="module")
def train_cache(tmp_path_factory) -> Path:
    return render_humanoid_cache(tmp_path_factory.mktemp("quality_training") / "train.zarr", 8)


def jobs(module, train: Path, folder: Path) -> list:
    """Ours for 2 steps (seeds 0 and 1) and a weight-averaged bound for 3, listed shortest first."""
    joints = len(CacheReader(train).layout.ground_truth.joint_names)
    bound = dataclasses.replace(TINY_STAGE_TWO, num_keypoints=joints, steps=3)
    return [
        *(
            module.TrainingJob(
                f"ours-{seed}",
                train,
                folder / f"ours-{seed}",
                dataclasses.replace(TINY_STAGE_TWO, steps=2, seed=seed),
            )
            for seed in (0, 1)
        ),
        module.TrainingJob("bound", train, folder / "bound", bound, SupervisedLosses(weight_average=0.5)),
    ]


def weights(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    """The state dicts of the jobs' models in `folder`."""
    models = {name: load_model(latest_checkpoint(folder / name)) for name in ("ours-0", "ours-1")}
    models["bound"] = load_model(folder / "bound" / "model")
    return {name: model.state_dict() for name, model in models.items()}


def test_trainings_in_two_workers_give_the_weights_of_one_after_another(
    quality_training, train_cache, tmp_path, capsys
):
    minutes = {}
    for workers in (1, 2):
        minutes[workers] = quality_training.train_all(
            jobs(quality_training, train_cache, tmp_path / str(workers)), workers
        )
        # The workers print nothing of their own: each finished model gets a line.
        reported = capsys.readouterr().err
        for name in ("ours-0", "ours-1", "bound"):
            assert f"trained {name} in " in reported
    assert set(minutes[1]) == set(minutes[2]) == {"ours-0", "ours-1", "bound"}
    assert all(m > 0 for m in minutes[2].values())
    alone, beside = weights(tmp_path / "1"), weights(tmp_path / "2")
    for name in alone:
        assert alone[name].keys() == beside[name].keys()
        for key in alone[name]:
            assert torch.equal(alone[name][key], beside[name][key]), f"{name}: {key} differs"
    # The two seeds differ, so the comparison above can tell the models apart.
    assert not torch.equal(alone["ours-0"]["adjacency"], alone["ours-1"]["adjacency"])
    assert not (tmp_path / "2" / "bound" / "model.partial").exists()


def test_the_bound_starts_first_and_a_failed_job_is_raised(quality_training, train_cache, tmp_path, capsys):
    listed = jobs(quality_training, train_cache, tmp_path)
    ordered = sorted(listed, key=lambda job: job.longest_first_key)
    assert [job.name for job in ordered] == ["bound", "ours-0", "ours-1"]
    missing = dataclasses.replace(listed[0], train=tmp_path / "missing.zarr")
    with pytest.raises(Exception, match="missing.zarr"):
        quality_training.train_all([missing, listed[1]], workers=2)
    # The other job still ran to the end and was reported before the error was raised.
    reported = capsys.readouterr().err
    assert "trained ours-1 in " in reported and "trained ours-0 in " not in reported
    with pytest.raises(ValueError, match="unique"):
        quality_training.train_all([listed[0], listed[0]], workers=1)


def test_render_waits_for_another_process_rendering_the_same_cache(quality_training, tmp_path, monkeypatch):
    import quality_models

    from pipeline.store_lock import hold_store_lock

    monkeypatch.setattr(quality_models, "RENDER_WAIT_SECONDS", 0.05)
    out = tmp_path / "humanoid-train.zarr"
    finished = []
    with hold_store_lock(out):  # as a screening run started a moment earlier would
        waiter = threading.Thread(
            target=lambda: finished.append(quality_models.render(tmp_path, "humanoid", "train", 2))
        )
        waiter.start()
        time.sleep(0.5)
        assert waiter.is_alive() and not finished
    waiter.join(timeout=120)
    assert finished == [out] and len(CacheReader(out).done_indices()) == 2


def test_render_refuses_to_wait_for_its_own_parent(quality_training, tmp_path, monkeypatch):
    # A script without a __main__ guard is re-run by the dask workers its render starts;
    # their render would wait for the lock their parent holds, and the parent for them.
    import quality_models

    from pipeline.store_lock import hold_store_lock

    monkeypatch.setattr(quality_models, "RENDER_WAIT_SECONDS", 0.05)
    monkeypatch.setattr(os, "getppid", os.getpid)  # the lock's holder is our parent
    raised = []

    def render() -> None:
        try:
            quality_models.render(tmp_path, "humanoid", "train", 2)
        except RuntimeError as exc:
            raised.append(str(exc))

    with hold_store_lock(tmp_path / "humanoid-train.zarr"):
        caller = threading.Thread(target=render, daemon=True)
        caller.start()
        caller.join(timeout=30)
        assert not caller.is_alive(), "render waited for its own parent"
    assert len(raised) == 1 and "if __name__ == '__main__':" in raised[0]
