"""Render a sweep's MLflow runs as the paper's table, with the paper's numbers beside ours.

One row per grid point (seeds aggregated: mean, and std where there are several), the axis
values, ``top1`` (when trained), ``params_M``, ``GFLOPs`` (fvcore multiply-accumulates per view),
``latency_ms``, and ``paper_*`` columns wherever the paper printed that row.
Writes table.csv, table.md (with the verdicts on the spec's claims), table.html, table.tex and
verdicts.csv; ``reports.report`` adds the figures.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

MEASURED = ["top1", "top5", "params_M", "GFLOPs", "latency_ms", "latency_p90_ms", "train_step_ms",
            "latency_x", "train_step_x"]


def paper_values(paper: pd.DataFrame | None, row: dict | None) -> dict[str, float]:
    """The paper's numbers for the row whose key columns equal ``row`` (e.g. {shift_percent: 25})."""
    if paper is None or not row:
        return {}
    mask = pd.Series(True, index=paper.index)
    for k, v in row.items():
        if k not in paper.columns:
            raise KeyError(f"paper_row key {k!r} is not a column of the paper table ({', '.join(paper.columns)})")
        mask &= paper[k].map(lambda cell: _same(cell, v))
    hits = paper[mask]
    if len(hits) != 1:
        return {}
    rec = hits.iloc[0]
    return {f"paper_{c}": rec[c] for c in paper.columns if c not in row and pd.api.types.is_number(rec[c])}


def _same(cell, value) -> bool:
    """25 == 25.0 == "25": the YAML and the CSV spell numbers differently."""
    try:
        return float(cell) == float(value)
    except (TypeError, ValueError):
        return str(cell) == str(value)


def build_table(spec, runs: pd.DataFrame) -> pd.DataFrame:
    paper = pd.read_csv(spec.paper_table) if spec.paper_table else None
    rows, seen = [], {}
    for trial in spec.trials:
        key = (trial.variant, tuple(trial.axes.items()))
        if key not in seen:
            seen[key] = {"trial": trial, "hashes": []}
        seen[key]["hashes"].append(trial.hash)
    by_hash = runs.set_index("trial_hash") if len(runs) else pd.DataFrame()
    for (variant, axes), point in seen.items():
        row: dict = {}
        if variant:
            row["variant"] = variant
        row.update({k.split(".")[-1]: v for k, v in axes})
        have = [h for h in point["hashes"] if h in by_hash.index]
        row["runs"] = f"{len(have)}/{len(point['hashes'])}"
        for col in MEASURED:
            if have and col in by_hash.columns:
                values = by_hash.loc[have, col].dropna()
                if len(values):
                    row[col] = values.mean()
                    if col.startswith("top") and len(values) > 1:
                        row[f"{col}_std"] = values.std(ddof=1)
        row.update(paper_values(paper, point["trial"].paper_row))
        rows.append(row)
    table = pd.DataFrame(rows)
    _add_ratios(table, [p["trial"] for p in seen.values()])
    ordered = [c for c in table.columns if not c.startswith("paper_")] + [c for c in table.columns if c.startswith("paper_")]
    return table[ordered]


def _add_ratios(table: pd.DataFrame, trials: list) -> None:
    """``latency_x`` / ``train_step_x``: cost relative to the row named by the variant's ``baseline``.

    Trials time their baseline side by side and report the ratio themselves; only where a run
    has none (an older run) is it the ratio of the two rows' medians, which were measured at
    different times and are noisier."""
    if "variant" not in table.columns or not any(t.baseline for t in trials):
        return
    index = {name: i for i, name in enumerate(table["variant"])}
    for col in ("latency_ms", "train_step_ms"):
        if col not in table.columns:
            continue
        ratio_col = col.replace("_ms", "_x")
        measured = table[ratio_col] if ratio_col in table.columns else pd.Series(float("nan"), index=table.index)

        def ratio(i: int, trial) -> float:
            if not pd.isna(measured[i]) or not trial.baseline:
                return measured[i]
            return table.at[i, col] / table.at[index[trial.baseline], col]

        table[ratio_col] = [ratio(i, t) for i, t in enumerate(trials)]


PAPER_DATASET = "something-v1"  # every accuracy the paper's ablation tables print is on SS-V1
SHARED_CPU_COLUMNS = ("latency_ms", "latency_p90_ms", "train_step_ms")


def table_baseline(spec) -> str | None:
    """The row the others are compared with: the variant most trials name as ``baseline``."""
    named = [t.baseline for t in spec.trials if t.baseline]
    return max(set(named), key=named.count) if named else None


def shared_cpu(runs: pd.DataFrame) -> int:
    """How many trials at most shared one node's CPU while these runs were measured (1: alone)."""
    col = "tag.cpu_shared_by"
    if col not in runs.columns:
        return 1
    return int(pd.to_numeric(runs[col], errors="coerce").fillna(1).max())


def comparability(spec, runs: pd.DataFrame) -> dict[str, str]:
    """Which of our columns compare with the paper's numbers, and which do not (column -> note)."""
    config = spec.trials[0].config if spec.trials else {}
    model, data, measure_cfg = config.get("model", {}), config.get("data", {}), config.get("measure", {})
    notes = {}
    if data.get("dataset") == PAPER_DATASET:
        notes["top1"] = "top1 compares with paper_top1 (same dataset, Something-Something V1)."
    else:
        notes["top1"] = (f"top1 is on `{data.get('dataset')}`, not the paper's Something-Something V1: compare its "
                         f"order and the claims' signs with the paper, never its values.")
    full_size = (model.get("width_mult", 1.0) == 1.0 and model.get("num_classes") == 174
                 and measure_cfg.get("input_size") == 224)
    if full_size:
        notes["params_M"] = "params_M and GFLOPs are the paper's network at 224 px: they compare with paper_* directly."
    else:
        notes["params_M"] = (f"params_M and GFLOPs are of a scaled model (width x{model.get('width_mult', 1.0)}, "
                             f"{model.get('num_classes')} classes, {measure_cfg.get('input_size')} px): compare their "
                             f"ratios over the baseline row with the paper's, not their values.")
    n = shared_cpu(runs)
    if n > 1:
        notes["latency_ms"] = (f"† latency_ms, latency_p90_ms, train_step_ms were timed while up to {n} trials shared "
                               f"this CPU: not comparable across rows nor with the paper. latency_x / train_step_x "
                               f"(model and baseline timed alternately in one process) are the numbers to read.")
    else:
        notes["latency_ms"] = ("latency_ms: absolute time on this machine; compare rows through latency_x (timed side "
                               "by side), and the paper's Titan V numbers not at all.")
    return notes


def _headers(table: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """The table as shown (md/html): columns timed on a shared CPU marked with †."""
    if shared_cpu(runs) <= 1:
        return table
    return table.rename(columns={c: f"{c}†" for c in SHARED_CPU_COLUMNS if c in table.columns})


def render_table(spec, runs: pd.DataFrame, out_dir: str | Path) -> pd.DataFrame:
    """table.{csv,md,html,tex} and verdicts.csv into ``out_dir``; returns the table."""
    from reports.verdicts import claim_verdicts, verdicts_frame, verdicts_markdown

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = build_table(spec, runs)
    verdicts = claim_verdicts(spec, runs, table)
    table.to_csv(out / "table.csv", index=False)
    verdicts_frame(verdicts).to_csv(out / "verdicts.csv", index=False)
    notes = comparability(spec, runs)
    note = (f"\n\n{spec.name} — profile `{spec.profile or '-'}`. GFLOPs: fvcore multiply-accumulates of one view "
            f"(T frames); latency: median forward ms of one clip; *_x: time over the baseline's, both timed "
            f"alternately in one trial (median of per-round ratios); top1: mean over seeds (± std). "
            f"paper_*: Sudhakaran et al., TPAMI 2023.\n\n" + "\n".join(f"- {v}" for v in notes.values()) + "\n")
    claims = verdicts_markdown(verdicts, table)
    shown = _headers(table, runs)
    (out / "table.md").write_text(shown.to_markdown(index=False, floatfmt=".2f") + note
                                  + (f"\n{claims}\n" if claims else ""))
    shown.to_html(out / "table.html", index=False, float_format=lambda x: f"{x:.2f}", na_rep="")
    (out / "table.tex").write_text(table.to_latex(index=False, float_format="%.2f", na_rep="--"))
    return table


def row_labels(table: pd.DataFrame) -> list[str]:
    keys = [c for c in table.columns if c not in MEASURED and c != "runs" and not c.startswith("paper_")
            and not c.endswith("_std")]
    return [" ".join(str(r[k]) for k in keys) for _, r in table.iterrows()]
