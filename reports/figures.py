"""The report's figures: the table figure and the paper's Figs. 7, 8 and 9, from plain data.

Each function takes what it draws (a rendered table, per-seed confusion matrices, gate
histograms) and writes one PNG; ``reports.__main__`` reads those inputs from a results folder
and the MLflow store, so every figure is one command.

- ``plot_table``: Δ top-1 of each row over the baseline row (ours and the paper's: the two are
  on different benchmarks, so they share a sign and an order at best, never a scale), cost
  ratios over the baseline (params, GFLOPs, latency_x), and our absolute sizes.
- ``plot_fig7``: the classes a row improved most over the baseline, labelled
  "true / baseline's most frequent prediction".
- ``plot_fig8``: the histogram of tanh gate values per GSF layer, bottom layer at the bottom.
- ``plot_fig9``: top-1 against GFLOPs, marker area proportional to parameters; ours and the
  paper's same rows in separate panels (a thin CPU smoke model and a full network share no
  scale), GFLOPs from 0 and labels spread apart so that neither noise nor names pile up.
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from reports.render import cell  # noqa: E402  (the table's rounding, so the figure's numbers read the same)

OURS, PAPER = "#1f77b4", "#ff7f0e"


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _ratios(table: pd.DataFrame, col: str, pairs: list[tuple[int, int]]) -> np.ndarray:
    """``col`` of each compared row over its reference row's."""
    if col not in table.columns:
        return np.full(len(pairs), np.nan)
    return np.array([table.at[i, col] / table.at[j, col] if table.at[j, col] else np.nan for i, j in pairs],
                    dtype=float)


def plot_table(table: pd.DataFrame, path: Path, title: str, labels: list[str], pairs: list[tuple[int, int]],
               deltas: dict[int, tuple[float, float, float]] | None = None) -> Path | None:
    """What compares with the paper, per row: Δ top-1 over its reference row (ours with a 95%
    interval, the paper's), cost ratios over it, and our absolute sizes.

    ``labels``: one per row; ``pairs``: (row, its reference row) for each compared row;
    ``deltas``: row -> (Δ top-1, 95% low, 95% high) over its reference, paired by seed."""
    if not pairs:
        return None
    table = table.reset_index(drop=True)
    refs = {j for _, j in pairs}
    over = labels[next(iter(refs))] if len(refs) == 1 else "its baseline"
    names = [labels[i] for i, _ in pairs]
    panels = []
    if "top1" in table.columns and table["top1"].notna().any():
        panels.append("delta")
    panels.append("cost")
    if "params_M" in table.columns:
        panels.append("sizes")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 0.5 * len(table) + 2.6), squeeze=False)
    y = np.arange(len(pairs))
    for ax, panel in zip(axes[0], panels):
        if panel == "delta":
            ours = [(deltas or {}).get(i, (table.at[i, "top1"] - table.at[j, "top1"], math.nan, math.nan))
                    for i, j in pairs]
            mean = np.array([d[0] for d in ours])
            err = np.array([[d[0] - d[1], d[2] - d[0]] if not math.isnan(d[1]) else [0, 0] for d in ours]).T
            ax.barh(y - 0.2, mean, 0.4, xerr=err, capsize=3, color=OURS, label="ours (95% interval)")
            if "paper_top1" in table.columns and table["paper_top1"].notna().any():
                paper = [table.at[i, "paper_top1"] - table.at[j, "paper_top1"] for i, j in pairs]
                ax.barh(y + 0.2, paper, 0.4, color=PAPER, label="paper (SS-V1)")
            ax.axvline(0, color="k", lw=0.8)
            ax.set_title(f"Δ top-1 over {over} (points)", fontsize=10)
            ax.legend(fontsize=7, loc="best")
        elif panel == "cost":
            series = [(f"{c} ×", _ratios(table, c, pairs)) for c in ("params_M", "GFLOPs")]
            if "latency_x" in table.columns:
                series.append(("latency × (side by side)", table["latency_x"].to_numpy()[[i for i, _ in pairs]]))
            series += [(f"paper {c} ×", _ratios(table, f"paper_{c}", pairs)) for c in ("params_M", "GFLOPs")]
            series = [(n, v) for n, v in series if np.isfinite(v).any()]
            width = 0.8 / max(1, len(series))
            for k, (name, v) in enumerate(series):
                color = PAPER if name.startswith("paper") else OURS
                ax.barh(y - 0.4 + width * (k + 0.5), v, width, color=color, alpha=1.0 - 0.3 * (k % 3), label=name)
            values = np.concatenate([v[np.isfinite(v)] for _, v in series] + [np.array([1.0])])
            pad = max(0.02, (values.max() - values.min()) * 0.15)
            ax.set_xlim(min(values.min(), 1.0) - pad, values.max() + pad)
            ax.axvline(1, color="k", lw=0.8)
            ax.set_title(f"cost over {over} (×)", fontsize=10)
            if series:
                ax.legend(fontsize=7, loc="best")
        else:
            rows = np.arange(len(table))
            ax.barh(rows, table["params_M"], 0.6, color=OURS)
            for r in rows:
                text = f"{cell('params_M', table.at[r, 'params_M'])} M"
                if "GFLOPs" in table.columns and pd.notna(table.at[r, "GFLOPs"]):
                    text += f", {cell('GFLOPs', table.at[r, 'GFLOPs'])} GFLOPs"
                ax.text(table.at[r, "params_M"], r, " " + text, va="center", fontsize=7)
            ax.set_yticks(rows, labels, fontsize=8)
            ax.invert_yaxis()
            ax.set_xlim(0, table["params_M"].max() * 1.9)
            ax.set_title("our sizes (params; GFLOPs per view)", fontsize=10)
            continue
        ax.set_yticks(y, names, fontsize=8)
        ax.invert_yaxis()
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


# --- Fig. 7 -------------------------------------------------------------------------------------


def most_improved(row: list[np.ndarray], base: list[np.ndarray], names: list[str], k: int = 10) -> pd.DataFrame:
    """Per class: clips corrected (row's correct minus the baseline's, summed over the paired
    seeds' confusion matrices, true x predicted), and the baseline's most frequent wrong answer."""
    r, b = sum(row), sum(base)
    gain = np.diag(r) - np.diag(b)
    wrong = b.copy()
    np.fill_diagonal(wrong, -1)
    out = pd.DataFrame({
        "class": names, "gain": gain, "row_correct": np.diag(r), "baseline_correct": np.diag(b),
        "clips": r.sum(1), "baseline_prediction": [names[j] for j in wrong.argmax(1)],
    })
    return out.sort_values("gain", ascending=False, kind="stable").head(k).reset_index(drop=True)


def plot_fig7(improved: pd.DataFrame, path: Path, row: str, baseline: str, seeds: int) -> Path:
    fig, ax = plt.subplots(figsize=(7.5, 0.38 * len(improved) + 1.6))
    y = np.arange(len(improved))
    ax.barh(y, improved["gain"], color=OURS)
    for i, r in improved.iterrows():
        ax.text(r["gain"], i, f" {r['row_correct']}/{r['clips']} vs {r['baseline_correct']}/{r['clips']}",
                va="center", fontsize=7)
    ax.set_yticks(y, [f"{c} / {p}" for c, p in zip(improved["class"], improved["baseline_prediction"])], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(min(0, improved["gain"].min()) * 1.1, max(1, improved["gain"].max()) * 1.35)
    ax.set_xlabel(f"clips corrected by {row} over {baseline} (summed over {seeds} seed{'s' * (seeds != 1)})")
    ax.set_title(f"Fig. 7: classes most improved over {baseline}\nlabels: true class / {baseline}'s most "
                 f"frequent wrong prediction", fontsize=10)
    return _save(fig, path)


# --- Fig. 8 -------------------------------------------------------------------------------------


def pool_gates(summaries: list[dict]) -> dict:
    """Gate histograms of several runs (seeds) of one row, summed layer by layer."""
    first = summaries[0]
    layers = []
    for i, layer in enumerate(first["layers"]):
        parts = [s["layers"][i] for s in summaries if i < len(s["layers"])]
        n = sum(p["values"] for p in parts)
        mean = sum(p["mean"] * p["values"] for p in parts) / n
        second = sum((p["std"] ** 2 + p["mean"] ** 2) * p["values"] for p in parts) / n
        layers.append({"name": layer["name"], "counts": np.sum([p["counts"] for p in parts], axis=0).tolist(),
                       "values": n, "mean": mean, "std": math.sqrt(max(0.0, second - mean ** 2)),
                       "negative": sum(p["negative"] * p["values"] for p in parts) / n})
    return {"edges": first["edges"], "layers": layers}


def gate_answer(gates: dict) -> str:
    """Are bottom layers differencing (gates mostly negative) and top layers averaging (positive)?"""
    layers = gates["layers"]
    if len(layers) < 2:
        return "one GSF layer: no bottom/top to compare"
    half = len(layers) // 2
    bottom = np.mean([l["mean"] for l in layers[:half]])
    top = np.mean([l["mean"] for l in layers[half:]])
    verdict = "yes" if bottom < 0 < top else "partly" if bottom < top else "no"
    return (f"{verdict}: mean gate of the bottom {half} layers {bottom:+.3f}, of the top {len(layers) - half} "
            f"{top:+.3f} (the paper: negative at the bottom, i.e. differencing; positive at the top, averaging)")


def plot_fig8(gates: dict, path: Path, row: str, seeds: int) -> Path:
    edges = np.asarray(gates["edges"])
    centres = (edges[:-1] + edges[1:]) / 2
    layers = gates["layers"]
    fig, axes = plt.subplots(len(layers), 1, figsize=(7, 0.75 * len(layers) + 1.4), sharex=True, squeeze=False)
    for ax, layer in zip(axes[::-1, 0], layers):  # bottom layer in the bottom panel
        counts = np.asarray(layer["counts"])
        share = counts / max(1.0, counts.sum())
        colors = np.where(centres < 0, "#d62728", "#2ca02c")
        ax.bar(centres, share, width=edges[1] - edges[0], color=colors, alpha=0.8)
        ax.axvline(0, color="k", lw=0.6)
        ax.axvline(layer["mean"], color="k", lw=1.2, ls="--")
        ax.set_yticks([])
        ax.set_ylabel(layer["name"].removeprefix("backbone."), rotation=0, ha="right", va="center", fontsize=7)
        ax.text(1.02, 0.5, f"mean {layer['mean']:+.2f}\n{100 * layer['negative']:.0f}% < 0", transform=ax.transAxes,
                fontsize=7, va="center")
    axes[-1, 0].set_xlabel("tanh gate value (red < 0: differencing, green > 0: averaging; dashed: mean)")
    axes[-1, 0].set_xlim(-1, 1)
    fig.suptitle(f"Fig. 8: gate values per GSF layer, {row} ({seeds} seed{'s' * (seeds != 1)} pooled; "
                 f"bottom layer at the bottom)", fontsize=10)
    return _save(fig, path)


# --- Fig. 9 -------------------------------------------------------------------------------------


def spread(ys: list[float], gap: float) -> list[float]:
    """Label heights near ``ys`` at least ``gap`` apart, in the same order: overlapping labels are
    merged into blocks centred on their points (so a label moves no further than its block needs)."""
    blocks: list[tuple[float, list[int]]] = []  # (lowest height, members bottom to top)
    for i in sorted(range(len(ys)), key=lambda i: ys[i]):
        blocks.append((ys[i], [i]))
        while len(blocks) > 1 and blocks[-2][0] + len(blocks[-2][1]) * gap > blocks[-1][0]:
            members = blocks[-2][1] + blocks[-1][1]
            blocks[-2:] = [(sum(ys[m] for m in members) / len(members) - (len(members) - 1) * gap / 2, members)]
    out = [0.0] * len(ys)
    for low, members in blocks:
        for k, m in enumerate(members):
            out[m] = low + k * gap
    return out


def around(values, floor: float = -math.inf, ceil: float = math.inf, at_least: float = 0.1) -> tuple[float, float]:
    """Axis limits that show the data without magnifying its noise: the data's span plus a quarter,
    and never less than ±``at_least`` of its centre (a 2% difference looks like 2%)."""
    low, high = float(np.min(values)), float(np.max(values))
    centre = (low + high) / 2
    half = max((high - low) / 2 * 1.25, abs(centre) * at_least, 1e-9)
    return max(floor, centre - half), min(ceil, centre + half)


def fig9_figure(points: pd.DataFrame):
    """Fig. 9 as a matplotlib figure (``plot_fig9`` saves it). ``points``: one row per table row:
    sweep, label, top1, GFLOPs, params_M and, where the paper printed them, paper_top1,
    paper_GFLOPs, paper_params_M. GFLOPs start at 0, so that sizes compare as ratios."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.2))
    sweeps = list(dict.fromkeys(points["sweep"]))
    colors = {s: plt.cm.tab10(i % 10) for i, s in enumerate(sweeps)}
    font = 7

    def scatter(ax, frame, top1, gflops, params, title, missing):
        have = frame.dropna(subset=[top1, gflops, params]) if set([top1, gflops, params]) <= set(frame.columns) \
            else frame.iloc[0:0]
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("top-1 (%)")
        if not len(have):
            ax.text(0.5, 0.5, missing, transform=ax.transAxes, ha="center", va="center", fontsize=8, wrap=True)
            ax.set_xticks([])
            ax.set_yticks([])
            return
        biggest = have[params].max()
        scale = 900.0 / biggest
        for sweep in sweeps:
            part = have[have["sweep"] == sweep]
            if len(part):
                ax.scatter(part[gflops], part[top1], s=part[params] * scale, color=colors[sweep], alpha=0.55,
                           edgecolor="k", label=sweep)
        ax.set_xlim(0, have[gflops].max() * 1.45)
        ax.set_ylim(*around(have[top1], 0, 100))
        ax.set_xlabel(f"GFLOPs per view (multiply-accumulates), from 0; marker area ∝ params (largest "
                      f"{biggest:.3g} M)", fontsize=8)
        (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
        box = ax.get_position()
        width, height = box.width * fig.get_figwidth() * 72, box.height * fig.get_figheight() * 72  # points
        xs = ((have[gflops] - x0) / (x1 - x0)).tolist()
        ys = spread(((have[top1] - y0) / (y1 - y0)).tolist(), 1.6 * font / height)
        for (_, r), x, y in zip(have.iterrows(), xs, ys):
            radius = math.sqrt(r[params] * scale / math.pi)  # points
            ax.annotate(str(r["label"]), (r[gflops], r[top1]), xytext=(x + (radius + 6) / width, y),
                        textcoords="axes fraction", fontsize=font, va="center",
                        color=colors[r["sweep"]] if len(sweeps) > 1 else "k",
                        arrowprops={"arrowstyle": "-", "color": "0.45", "lw": 0.6, "shrinkA": 1, "shrinkB": radius})
        legend = ax.legend(fontsize=7, loc="lower left")
        for handle in legend.legend_handles:
            handle.set_sizes([40])

    scatter(axes[0], points, "top1", "GFLOPs", "params_M", "ours (this run's profile and benchmark)", "no results")
    printed = points.dropna(subset=["paper_top1"]) if "paper_top1" in points.columns else points.iloc[0:0]
    top1 = ", ".join(f"{r['label']} {r['paper_top1']:.2f}" for _, r in printed.iterrows())
    scatter(axes[1], points, "paper_top1", "paper_GFLOPs", "paper_params_M",
            "the paper, the same rows (Something-Something V1, 8 frames, 1 clip)",
            "the paper prints no params or GFLOPs for these rows" + (f"\nits top-1: {top1}" if top1 else ""))
    fig.suptitle("Fig. 9: accuracy against complexity", fontsize=11)
    return fig


def plot_fig9(points: pd.DataFrame, path: Path) -> Path:
    return _save(fig9_figure(points), path)
