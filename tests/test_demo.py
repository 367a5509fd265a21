"""`keydiff3d demo`: the whole product on the synthetic world, shrunk to seconds."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

pytest.importorskip("pybullet")

from typer.testing import CliRunner  # noqa: E402

from pipeline.demo import DemoConfig, evaluation_reserve, run_demo  # noqa: E402
from pipeline.main_cli import app  # noqa: E402
from stages.keypoints.config import PRESETS  # noqa: E402

TINY_MODEL = {
    "num_keypoints": 6,
    "volume_size": 8,
    "volume_channels": (8, 16),
    "feature_channels": 16,
    "feature_size": 16,
    "keypoint_channels": 8,
    "render_size": 32,
    "decoder_channels": 8,
    "batch_size": 2,
    "checkpoint_every": 10,
}


def test_budgeted_demo_plans_its_steps_writes_the_report_and_resumes_to_the_same_plan(
    tmp_path, one_torch_thread
):
    config = DemoConfig(
        tmp_path / "demo", minutes=0.3, train_samples=8, test_samples=6, resolution=32, stage_two=TINY_MODEL
    )
    result = run_demo(config, render_progress=False)
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    plan = json.loads((tmp_path / "demo" / "run" / "demo_plan.json").read_text())
    # The calibration run always happens; the plan then adds what the budget allows.
    assert summary["steps"] == plan["steps"] >= 20 and plan["seconds_per_step"] > 0
    assert (summary["train_samples"], summary["test_samples"]) == (8, 6)
    assert set(summary["minutes"]) == {"render", "train", "evaluate", "total"}
    # The seen-motions test set: new draws of the training clips, scored by their own regressors.
    seen = summary["seen_motions"]
    rows = {"linear", "mlp", "mlp+mirror x5"}
    assert seen["test_samples"] == 6 and {r["regression"] for r in seen["results"]} == rows
    assert {r["regression"] for r in summary["results"]} == rows
    assert seen["results"] != summary["results"]

    report = result.report.read_text()
    assert "| KeyDiff3D (ours) | 4 | 6 | linear |" in report and "| mean pose (baseline) |" in report
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert "## Results on new draws of the training motions" in report
    assert report.count("the Procrustes mean shape in P-MPJPE") == 4
    assert report.count("ours + MLP (this project's protocol: 5 MLPs fitted with the mirror images)") == 2
    assert report.count("ours + MLP (the paper's single MLP)") == 2
    assert "| KeyDiff3D (ours) | 4 | 6 | mlp+mirror x5 |" in report
    assert len(pictures) == 6 and any(p.endswith("consistency.png") for p in pictures)
    assert "| flip-aware P-MPJPE (mm) |" in report and "| left_knee |" in report
    assert "| keypoint | most often nearest joint | consistency |" in report
    mean = summary["keypoint_consistency"]["mean_consistency"]
    assert f"Mean consistency over keypoints: {mean:.2f}" in report
    for picture in pictures:
        assert (tmp_path / "demo" / picture).stat().st_size > 2000, picture

    # Rerunning after a stop resumes to the planned total: no new steps, same checkpoint.
    lines = (tmp_path / "demo" / "run" / "metrics.jsonl").read_text().splitlines()
    again = run_demo(config, render_progress=False)
    assert again.summary["steps"] == plan["steps"]
    assert (tmp_path / "demo" / "run" / "metrics.jsonl").read_text().splitlines() == lines
    assert again.summary["results"] == summary["results"]


def test_demo_command_with_the_cpu_preset_prints_a_summary(tmp_path):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--train-samples", "8", "--test-samples", "6", "--steps", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "demo done in" in result.output and "P-MPJPE" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2
    assert summary["stage_two"]["num_keypoints"] == PRESETS["cpu"].num_keypoints == 32
    assert all(np.isfinite(r["p_mpjpe_mm"]) for r in summary["results"])
    assert all(r["pf_mpjpe_mm"] <= r["p_mpjpe_mm"] + 1e-9 for r in summary["results"] + summary["baselines"])
    assert "flip-aware" in result.output and "keypoint consistency" in result.output
    assert str(out / "report.md") in result.output
    # The verdict against the constant to beat, by how much, in the output and the report.
    mlp = next(r for r in summary["results"] if r["regression"] == "mlp")["p_mpjpe_mm"]
    shape = next(b for b in summary["baselines"] if "Procrustes" in b["method"])["p_mpjpe_mm"]
    verdict = f"the Procrustes mean shape in P-MPJPE: {mlp:.1f} vs {shape:.1f} mm ({shape - mlp:+.1f} mm"
    assert verdict in result.output and verdict in (out / "report.md").read_text()
    mirrored = next(r for r in summary["results"] if r["regression"] == "mlp+mirror x5")["p_mpjpe_mm"]
    line = (
        "ours + MLP (this project's protocol: 5 MLPs fitted with the mirror images) "
        f"{'beats' if mirrored < shape else 'does NOT beat'}"
    )
    assert f"{line} the Procrustes mean shape in P-MPJPE: {mirrored:.1f} vs {shape:.1f} mm" in result.output
    assert (
        "held-out motions: ours + MLP" in result.output
        and "seen motions (6 new draws): ours + MLP" in result.output
    )


def test_demo_rejects_a_bad_budget_naming_the_option(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "d"), "--minutes", "0"])
    assert result.exit_code == 2 and "--minutes must be a finite number > 0" in result.output


def test_the_evaluation_reserve_scales_with_the_step_time_and_covers_a_measured_run():
    slack = 3 * 15.0
    fast = evaluation_reserve(15.0, 2250, 562, 0.45, 4) - slack
    slow = evaluation_reserve(15.0, 2250, 562, 0.90, 4) - slack
    assert slow == pytest.approx(2 * fast)
    # The 2026-12-07 fresh-clone demo (2,250 / 562 samples, 0.9006 s/step) spent 6.25
    # minutes evaluating; the seconds-per-pair reserve of that run kept 5.9.
    assert evaluation_reserve(15.0, 2250, 562, 0.9006, 4) >= 6.25 * 60
    assert evaluation_reserve(15.0, 2250, 562, 0.9006, 4, mirror_mlp_seeds=1) < 6.25 * 60
