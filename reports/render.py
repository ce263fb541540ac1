"""Render a sweep's MLflow runs as the paper's table, with the paper's numbers beside ours.

One row per grid point (seeds aggregated: mean, and std where there are several), the axis
values, ``top1`` (when trained), ``params_M``, ``GFLOPs`` (fvcore multiply-accumulates per view),
``latency_ms``, and ``paper_*`` columns wherever the paper printed that row.
Writes table.csv, table.md (with the verdicts on the spec's claims), table.html, table.tex and
verdicts.csv; ``reports.report`` adds the figures.
"""
from __future__ import annotations

import json
import math
import numbers
from pathlib import Path

import pandas as pd

MEASURED = ["top1", "top5", "params_M", "GFLOPs", "latency_ms", "latency_p90_ms", "train_step_ms",
            "latency_x", "train_step_x"]
SIZE_RATIOS = {"params_x": "params_M", "gflops_x": "GFLOPs"}  # ratio column -> the size it divides


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
    ours = [c for c in table.columns if not c.startswith("paper_") and c not in SIZE_RATIOS]
    for ratio, size in SIZE_RATIOS.items():  # each ratio beside its absolute column
        if ratio in table.columns:
            ours.insert(ours.index(size) + 1, ratio)
    return table[ours + [c for c in table.columns if c.startswith("paper_")]]


def reference_rows(trials: list) -> list[int | None]:
    """Per row (one trial each), the row its ratios are over: its ``baseline`` variant's row at the
    same axis values; a row other rows name as their baseline is its own (ratio 1)."""
    point = [json.dumps(t.axes, sort_keys=True, default=str) for t in trials]
    where = {(t.variant, p): i for i, (t, p) in enumerate(zip(trials, point))}
    named = {t.baseline for t in trials if t.baseline}
    return [where.get((t.baseline, p)) if t.baseline else i if t.variant in named else None
            for i, (t, p) in enumerate(zip(trials, point))]


def _add_ratios(table: pd.DataFrame, trials: list) -> None:
    """Cost over the baseline row: ``params_x`` / ``gflops_x`` from the table's own sizes,
    ``latency_x`` / ``train_step_x`` as the trials timed them; the baseline's own are 1.

    Trials time their baseline side by side and report the time ratio themselves; only where a
    run has none (an older run) is it the ratio of the two rows' medians, which were measured at
    different times and are noisier."""
    refs = reference_rows(trials)
    if all(j is None for j in refs):
        return

    def over(col: str, i: int, j: int | None) -> float:
        return table.at[i, col] / table.at[j, col] if j is not None else math.nan

    for ratio_col, col in SIZE_RATIOS.items():
        if col in table.columns:
            table[ratio_col] = [over(col, i, j) for i, j in enumerate(refs)]
    for col in ("latency_ms", "train_step_ms"):
        if col not in table.columns:
            continue
        ratio_col = col.replace("_ms", "_x")
        measured = table[ratio_col] if ratio_col in table.columns else pd.Series(math.nan, index=table.index)
        table[ratio_col] = [measured[i] if not pd.isna(measured[i]) else over(col, i, j) for i, j in enumerate(refs)]


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
    ratios = " (params_x, gflops_x)" if any(t.baseline for t in spec.trials) else ""
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
                             f"ratios over the baseline row{ratios} with the paper's, not their values.")
    n = shared_cpu(runs)
    if n > 1:
        notes["latency_ms"] = (f"† latency_ms, latency_p90_ms, train_step_ms were timed while up to {n} trials shared "
                               f"this CPU: not comparable across rows nor with the paper. latency_x / train_step_x "
                               f"(model and baseline timed alternately in one process) are the numbers to read.")
    else:
        notes["latency_ms"] = ("latency_ms: absolute time on this machine; compare rows through latency_x (timed side "
                               "by side), and the paper's Titan V numbers not at all.")
    return notes


def cell(column: str, value) -> str:
    """One rounding rule for the page, table.md/html/tex and the console, so a number reads the
    same everywhere: top-1/top-5 to 0.1 point (a mean of a few seeds on a few hundred clips),
    sizes and times to 3 significant figures (at least 2 decimals for sizes), ratios to 0.01,
    the paper's numbers with the 2 decimals it printed, axis values as the spec wrote them."""
    if value is None or isinstance(value, numbers.Real) and pd.isna(value):
        return ""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return str(value)
    name = column.rstrip("†")
    if name.startswith("paper_"):
        return f"{value:.2f}"
    if name.startswith(("top1", "top5")):
        return f"{value:.1f}"
    if name.endswith("_x"):
        return f"{value:.2f}"
    if name in ("params_M", "GFLOPs") or name.endswith("_ms"):
        three = 2 - math.floor(math.log10(abs(value))) if value and math.isfinite(value) else 0  # decimals
        return f"{value:.{max(three, 2 if name in ('params_M', 'GFLOPs') else 0)}f}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _numeric(column: str) -> bool:
    name = column.rstrip("†").removesuffix("_std")
    return name in MEASURED or name in SIZE_RATIOS or name.startswith("paper_")


def left_out(table: pd.DataFrame, num_classes: int | None = None) -> dict[str, str]:
    """Our measured columns that carry nothing, each with the footnote that says why: one shown
    value in every row, or a top-5 that is 100 by construction (5 classes or fewer) or
    saturated (every row within a point of 100). A column's ``_std`` goes with it."""
    out: dict[str, str] = {}
    if len(table) < 2:
        return out
    for col in [c for c in table.columns if c in MEASURED or c in SIZE_RATIOS]:
        shown = {cell(col, v) for v in table[col]}
        if col == "top5" and num_classes and num_classes <= 5:
            out[col] = f"top5 is left out: with {num_classes} classes it is 100 by construction."
        elif col == "top5" and table[col].min() >= 99.0:
            low, high = cell(col, table[col].min()), cell(col, table[col].max())
            values = low if low == high else f"{low}–{high}"
            out[col] = (f"top5 is left out: {values} in every row ({num_classes or '?'} classes), saturated; "
                        f"table.csv keeps it.")
        elif len(shown) == 1:
            value = shown.pop()
            out[col] = f"{col} is left out: " + (f"{value} in every row." if value else "no row has a value.")
    return out


def shown_table(table: pd.DataFrame, baselines=(), shared: int = 1,
                num_classes: int | None = None) -> tuple[pd.DataFrame, list[str]]:
    """The table as every reader sees it (table.md/html/tex, the index page, the console): cells
    by ``cell``, each baseline row marked, columns timed on a shared CPU marked with †, and the
    columns that carry nothing left out; returns it (all strings) and the footnotes on those."""
    dropped = left_out(table, num_classes)
    keep = [c for c in table.columns if c not in dropped and c.removesuffix("_std") not in dropped]
    shown = pd.DataFrame({c: [cell(c, v) for v in table[c]] for c in keep})
    if "variant" in shown.columns:
        shown["variant"] = [f"{v} (baseline)" if v in set(baselines) else v for v in shown["variant"]]
    if shared > 1:
        shown = shown.rename(columns={c: f"{c}†" for c in SHARED_CPU_COLUMNS if c in shown.columns})
    return shown, list(dropped.values())


def table_baselines(spec) -> list[str]:
    """Every variant some trial names as its ``baseline``: the rows marked as such."""
    return sorted({t.baseline for t in spec.trials if t.baseline})


def _markdown(shown: pd.DataFrame) -> str:
    align = ["right" if _numeric(c) else "left" for c in shown.columns]
    return shown.to_markdown(index=False, disable_numparse=True, colalign=align)


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
            f"(T frames); latency: median forward ms of one clip; params_x / gflops_x: size over the baseline row's "
            f"(at the same axis values; \"(baseline)\" marks it); latency_x / train_step_x: time over the baseline's, "
            f"both timed alternately in one trial (median of per-round ratios); top1: mean over seeds (± std). "
            f"paper_*: Sudhakaran et al., TPAMI 2023.\n\n" + "\n".join(f"- {v}" for v in notes.values()) + "\n")
    claims = verdicts_markdown(verdicts, table)
    classes = spec.trials[0].config.get("data", {}).get("num_classes") if spec.trials else None
    shown, dropped = shown_table(table, table_baselines(spec), shared_cpu(runs), classes)
    note += "".join(f"- {d}\n" for d in dropped)
    (out / "table.md").write_text(_markdown(shown) + note + (f"\n{claims}\n" if claims else ""))
    shown.to_html(out / "table.html", index=False)
    (out / "table.tex").write_text(shown_table(table, table_baselines(spec), 1, classes)[0].to_latex(index=False))
    return table


def row_labels(table: pd.DataFrame) -> list[str]:
    keys = [c for c in table.columns if c not in MEASURED and c not in SIZE_RATIOS and c != "runs"
            and not c.startswith("paper_") and not c.endswith("_std")]
    return [" ".join(str(r[k]) for k in keys) for _, r in table.iterrows()]
