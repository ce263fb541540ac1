"""Render a sweep's MLflow runs as the paper's table, with the paper's numbers beside ours.

One row per grid point (seeds aggregated: mean, and std where there are several), the axis
values, ``top1`` (when trained), ``params_M``, ``GFLOPs`` (fvcore multiply-accumulates per view),
``latency_ms``, and ``paper_*`` columns wherever the paper printed that row.
Writes table.csv, table.md, table.html, table.tex and table.png into the output folder.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

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


def render_table(spec, runs: pd.DataFrame, out_dir: str | Path) -> pd.DataFrame:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = build_table(spec, runs)
    table.to_csv(out / "table.csv", index=False)
    note = (f"\n\n{spec.name} — profile `{spec.profile or '-'}`. GFLOPs: fvcore multiply-accumulates of one view "
            f"(T frames); latency: median forward ms of one clip; *_x: time over the baseline's, both timed "
            f"alternately in one trial (median of per-round ratios); top1: mean over seeds (± std). "
            f"paper_*: Sudhakaran et al., TPAMI 2023.\n")
    (out / "table.md").write_text(table.to_markdown(index=False, floatfmt=".2f") + note)
    table.to_html(out / "table.html", index=False, float_format=lambda x: f"{x:.2f}", na_rep="")
    (out / "table.tex").write_text(table.to_latex(index=False, float_format="%.2f", na_rep="--"))
    plot_table(table, out / "table.png", spec.name)
    return table


def plot_table(table: pd.DataFrame, path: Path, title: str) -> None:
    """Bars of ours beside the paper's for the columns a reader compares: top1, GFLOPs, latency."""
    panels = [c for c in ("top1", "GFLOPs", "latency_ms") if c in table.columns and table[c].notna().any()]
    if not panels:
        return
    labels = _row_labels(table)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    for ax, col in zip(axes[0], panels):
        x = range(len(table))
        paper_col = f"paper_{col}"
        has_paper = paper_col in table.columns and table[paper_col].notna().any()
        width = 0.4 if has_paper else 0.8
        err = table.get(f"{col}_std")
        ax.bar([i - width / 2 * has_paper for i in x], table[col], width, yerr=err, capsize=3, label="ours")
        if has_paper:
            ax.bar([i + width / 2 for i in x], table[paper_col], width, label="paper")
            ax.legend(fontsize=8)
        ax.set_xticks(list(x), labels, rotation=30, ha="right", fontsize=8)
        ax.set_title(col)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _row_labels(table: pd.DataFrame) -> list[str]:
    keys = [c for c in table.columns if c not in MEASURED and c != "runs" and not c.startswith("paper_")
            and not c.endswith("_std")]
    return [" ".join(str(r[k]) for k in keys) for _, r in table.iterrows()]
