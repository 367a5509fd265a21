"""The quality benchmark's tables and verdicts, from its JSON rows (bench_quality.py).

Each row is one (category, test set, method, seed, regression) with its errors in mm:
`results_table` is the main table, `per_joint_tables` and `per_clip_tables` break the
flip-aware P-MPJPE down by joint and by motion clip, and `check_targets` states issue
12's targets as met or MISSED.
"""

from __future__ import annotations

TEST_SETS = ("held-out motions", "seen motions")
"""The two test caches: other clips (the humanoid) or a later segment (the quadruped), and
new draws (time, yaw, appearance, light) of the training clips, as Human3.6M's protocol
tests unseen subjects on the actions it trained on."""

MIRROR = "mlp+mirror x5"
"""The regression label of the project's protocol, the mean of 5 MLPs fitted on the training
pairs and their mirror images (`stages.evaluation.mirror.mirror_fit_label`; repeated here so
that this module loads without torch). `check_targets` judges it beside the paper's MLP."""

TARGET_SET = "held-out motions"
"""Issue 12 sets its targets on held-out motions only; the seen-motion lines are for reference."""


def results_table(rows: list[dict]) -> str:
    """A markdown table: one row per (category, test set, method, seed, regression); errors in mm."""
    lines = [
        "| category | test set | method | K | kp | seed | regression | MPJPE | N-MPJPE | P-MPJPE "
        "| flip-aware P-MPJPE | consistency | train min |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["category"], TEST_SETS.index(r["test"]))):
        consistency = f"{r['consistency']:.2f}" if "consistency" in r else "-"
        framed = r["method"] not in ("Procrustes mean", "nearest training pose")
        mpjpe = f"{r['mpjpe_mm']:.1f}" if framed else "-"
        n_mpjpe = f"{r['n_mpjpe_mm']:.1f}" if framed else "-"
        lines.append(
            f"| {r['category']} | {r['test']} | {r['method']} | {r['views']} | {r['kp']} | {r['seed']} "
            f"| {r['regression']} | {mpjpe} | {n_mpjpe} | {r['p_mpjpe_mm']:.1f} | {r['pf_mpjpe_mm']:.1f} "
            f"| {consistency} | {r['minutes']:.1f} |"
        )
    return "\n".join(lines)


def per_joint_tables(rows: list[dict]) -> str:
    """Per category and test set, flip-aware P-MPJPE per joint (mm) of the supervised bound,
    ours + MLP (first seed) and the Procrustes mean shape."""
    out = []
    for category in sorted({r["category"] for r in rows}):
        for label in TEST_SETS:
            picked = {}
            for r in rows:
                if r["category"] != category or r["test"] != label:
                    continue
                if r["method"] in ("Procrustes mean", "supervised"):
                    picked[r["method"]] = r
                elif r["method"] == "ours" and r["regression"] == "mlp" and "ours + MLP" not in picked:
                    picked["ours + MLP"] = r
            if not picked:
                continue
            names = list(next(iter(picked.values()))["per_joint_by_name_mm"])
            out.append(f"## {category}, {label}: flip-aware P-MPJPE per joint (mm)\n")
            out.append("| joint | " + " | ".join(picked) + " |")
            out.append("|---|" + "---|" * len(picked))
            for name in names:
                values = " | ".join(
                    f"{r['per_joint_by_name_mm'][name]['pf_mpjpe']:.1f}" for r in picked.values()
                )
                out.append(f"| {name} | {values} |")
            out.append("")
    return "\n".join(out)


def per_clip_tables(rows: list[dict]) -> str:
    """Per category with several clips and per test set, flip-aware P-MPJPE per motion clip
    (mm): the Procrustes mean shape, the nearest training pose, ours + MLP (every seed, and
    fitted with the mirror images where the rows hold them), the untrained network + MLP and
    the supervised bound. Shows on which motions ours beats the
    constant and on which the training clips hold no similar pose."""
    out = []
    for category in sorted({r["category"] for r in rows}):
        for label in TEST_SETS:
            picked = {}
            for r in rows:
                if r["category"] != category or r["test"] != label or "per_clip_mm" not in r:
                    continue
                if r["method"] in ("Procrustes mean", "nearest training pose", "supervised"):
                    picked[r["method"]] = r
                elif r["method"] in ("ours", "untrained") and r["regression"] == "mlp":
                    seed = f" seed {r['seed']}" if r["method"] == "ours" else ""
                    picked[f"{r['method']} + MLP{seed}"] = r
                elif r["method"] == "ours" and r["regression"] == MIRROR:
                    picked[f"ours + MLP+mirror x5 seed {r['seed']}"] = r
            clips = sorted({c for r in picked.values() for c in r["per_clip_mm"]})
            if len(clips) < 2:
                continue
            counts = next(iter(picked.values()))["per_clip_mm"]
            out.append(f"## {category}, {label}: flip-aware P-MPJPE per motion clip (mm)\n")
            out.append("| clip | samples | " + " | ".join(picked) + " |")
            out.append("|---|---|" + "---|" * len(picked))
            for clip in clips:
                values = " | ".join(f"{r['per_clip_mm'][clip]['pf_mpjpe']:.1f}" for r in picked.values())
                out.append(f"| {clip} | {counts[clip]['samples']} | {values} |")
            out.append("")
    return "\n".join(out)


def check_targets(rows: list[dict]) -> list[str]:
    """The issue's targets per category and test set: met or MISSED on held-out motions (never asserted).

    Against the Procrustes mean shape's P-MPJPE (the constant to beat): the supervised bound
    at most 0.5x; ours + MLP at most 0.8x for the humanoid and below 1x for the quadruped;
    K = 4 better than K = 1 and than the untrained network (MLP, worst seed of ours). The
    bound is trained flip-invariant, so it picks its own left/right convention: it is judged
    on the flip-aware P-MPJPE against the mean shape's flip-aware P-MPJPE, and its plain
    P-MPJPE is printed beside it. Only the held-out motions are judged (`TARGET_SET`): a
    seen-motion line says "yes" or "no" against the same bars, for reference. Where the rows
    hold the `MIRROR` regression (the project's protocol), a second line per test set judges
    ours + MLP under it against the same bar and against the untrained network fitted the
    same way; the first line always judges the paper's single MLP."""
    lines = []
    for category in sorted({r["category"] for r in rows}):
        for label in TEST_SETS:
            mine = [r for r in rows if r["category"] == category and r["test"] == label]
            if not mine:
                continue

            def first(method: str, metric: str = "p_mpjpe_mm", mine: list[dict] = mine) -> float:
                found = [
                    r[metric]
                    for r in mine
                    if r["method"] == method and r["regression"] in ("mlp", method, "direct")
                ]
                return found[0]

            shape, bound = first("Procrustes mean"), first("supervised")
            shape_flip = first("Procrustes mean", "pf_mpjpe_mm")
            bound_flip = first("supervised", "pf_mpjpe_mm")
            mlp = [r["p_mpjpe_mm"] for r in mine if r["method"] == "ours" and r["regression"] == "mlp"]
            k1, control = first("K=1"), first("untrained")
            ratio = 0.8 if category == "humanoid" else 1.0
            worst = max(mlp)

            judged = label == TARGET_SET
            heading = label if judged else f"{label} (for reference, not judged)"

            def verdict(ok: bool, judged: bool = judged) -> str:
                if judged:
                    return "met" if ok else "MISSED"
                return "yes" if ok else "no"

            mirrored = [r["p_mpjpe_mm"] for r in mine if r["method"] == "ours" and r["regression"] == MIRROR]
            mirrored_control = [
                r["p_mpjpe_mm"] for r in mine if r["method"] == "untrained" and r["regression"] == MIRROR
            ]
            lines.append(
                f"{category}, {heading}: supervised flip-aware {bound_flip:.1f} = "
                f"{bound_flip / shape_flip:.2f}x the Procrustes mean shape's {shape_flip:.1f} "
                f"(target <= 0.5x): "
                f"{verdict(bound_flip <= 0.5 * shape_flip)} (plain P-MPJPE {bound:.1f} = "
                f"{bound / shape:.2f}x); ours+MLP "
                f"{', '.join(f'{v:.1f}' for v in mlp)} = {worst / shape:.2f}x at worst (target <= {ratio}x): "
                f"{verdict(worst <= ratio * shape)}; K=4 {worst:.1f} vs K=1 {k1:.1f}: {verdict(worst < k1)}; "
                f"vs untrained {control:.1f}: {verdict(worst < control)}"
            )
            if mirrored:
                # A verdict of its own, never folded into the paper's: both protocols are shown.
                worst_mirrored = max(mirrored)
                control_note = (
                    f"; vs untrained {mirrored_control[0]:.1f} (same protocol): "
                    f"{verdict(worst_mirrored < mirrored_control[0])}"
                    if mirrored_control
                    else ""
                )
                lines.append(
                    f"{category}, {heading}, the project's protocol (5 MLPs fitted with the mirror "
                    f"images): ours+MLP {', '.join(f'{v:.1f}' for v in mirrored)} = "
                    f"{worst_mirrored / shape:.2f}x at worst (target <= {ratio}x): "
                    f"{verdict(worst_mirrored <= ratio * shape)}{control_note}"
                )
    return lines
