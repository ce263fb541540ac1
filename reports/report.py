"""A sweep's report (tables, verdicts, figures, ``sweep.json``, the MLflow parent run) and the index
page over every sweep of a results folder.

``report_sweep`` runs at the end of ``harness.sweep``. ``sweep.json`` records what the figures and
the index need without the spec: the rows, each seed's run id and top-1, the verdicts, the notes
on what compares with the paper, and the machines the runs came from. The figure commands of
``python -m reports`` start from it.
"""
from __future__ import annotations

import html
import json
import math
import os
import re
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd

from reports import figures
from reports.render import (comparability, left_out, render_table, row_labels, shared_cpu, shown_table,
                            table_baseline, table_baselines)
from reports.runs import flatten, run_url, runs_frame, runs_view_url, ui_base
from reports.verdicts import claim_verdicts, judge, kendall_tau, order_text, tau_text

# What makes two machines compute the same digits (harness.run_info.fingerprint): a run
# reproduces a reference's numbers exactly only where all of these match it.
FINGERPRINT_KEYS = ("hw.cpu", "hw.cpu_capability", "hw.threads", "sw.torch", "sw.torch_git")
SYNTHETIC_MD = Path(__file__).resolve().parent.parent / "docs" / "synthetic.md"
BACKBONES = {"resnet18": "ResNet-18", "resnet34": "ResNet-34", "resnet50": "ResNet-50", "resnet101": "ResNet-101",
             "bninception": "BNInception", "inception_v3": "InceptionV3"}
DATASETS = {"something-v1": "Something-Something V1", "something-v2": "Something-Something V2",
            "kinetics400": "Kinetics-400", "diving48": "Diving48"}


# --- one sweep ----------------------------------------------------------------------------------


def report_sweep(spec, client, runs: dict[str, Any], out_dir: str | Path, tracking_uri: str,
                 parent_run_id: str | None = None, mode: str = "") -> dict:
    """Tables, verdicts and figures of one sweep into ``out_dir``, its ``sweep.json``, and, with
    ``parent_run_id``, all of it onto that MLflow run. ``runs``: trial hash -> finished run.
    Returns the sweep's metadata (what ``sweep.json`` holds), with ``lines`` to print."""
    from reports import mlflow_ui

    out = Path(out_dir)
    frame = runs_frame(runs)
    exp = client.get_experiment_by_name(spec.name)
    if exp is not None:  # the cost ratios (the baseline's 1.0 too) onto the runs and into frame
        mlflow_ui.log_run_extras(client, spec, frame)
    table = render_table(spec, frame, out)
    verdicts = claim_verdicts(spec, frame, table)
    tau, tau_rows = kendall_tau(table)
    params = [run.data.params for run in runs.values()] or [flatten(t.config) for t in spec.trials]  # rows with no run yet
    classes = spec.trials[0].config["data"].get("num_classes") if spec.trials else None
    meta = {
        "name": spec.name, "description": spec.description, "profile": spec.profile, "mode": mode,
        "ran": ran_text(params) if params else "", "baselines": table_baselines(spec), "num_classes": classes,
        "left_out": list(left_out(table, classes).values()),
        "spec_path": str(spec.path), "tracking_uri": tracking_uri,
        "experiment_id": exp.experiment_id if exp else None,
        "parent_run_id": parent_run_id or _latest_sweep_run(client, exp),  # for the link, when nothing re-ran
        "baseline": table_baseline(spec),
        "dataset": spec.trials[0].config["data"]["dataset"] if spec.trials else "",
        "rows": _rows(spec, runs, table), "verdicts": [asdict(v) | {"summary": v.summary} for v in verdicts],
        "kendall_tau": tau, "tau_rows": tau_rows,
        "order_ours": order_text(table, "top1"), "order_paper": order_text(table, "paper_top1"),
        "notes": comparability(spec, frame), "shared_cpu": shared_cpu(frame),
        "fingerprints": _fingerprints(frame), "figures": {},
        "generated": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if exp is not None:
        mlflow_ui.describe_experiment(client, exp.experiment_id, spec.description, meta["verdicts"])
        meta["runs_view"] = mlflow_ui.set_runs_view(client, exp.experiment_id, spec)
    make_figures(meta, client, out, table)
    _write_meta(meta, out)
    meta["lines"] = console_lines(meta)
    if parent_run_id:
        mlflow_ui.log_to_parent(client, meta, out, spec.path)
    return meta


def _latest_sweep_run(client, exp) -> str | None:
    if exp is None:
        return None
    runs = client.search_runs([exp.experiment_id], "tags.kind = 'sweep'", order_by=["attributes.start_time DESC"],
                              max_results=1)
    return runs[0].info.run_id if runs else None


def ran_text(params: list[dict]) -> str:
    """What the rows ran, read from their runs' params (what the profile resolved to; the spec's
    description states the paper's setting): backbone and width, initialisation, frames, data.
    Where rows differ, their values are joined by " / "."""
    def each(fn) -> str:
        return " / ".join(dict.fromkeys(fn(p) for p in params))

    def model(p: dict) -> str:
        name = str(p.get("model.backbone"))
        width = _number(p.get("model.width_mult"), 1.0)
        return BACKBONES.get(name, name) + (f" x{width:g}" if width != 1 else "")

    def init(p: dict) -> str:
        if str(p.get("model.release_checkpoint")) not in ("None", ""):
            return "the authors' released weights"
        pretrained = str(p.get("model.pretrained"))
        return "from scratch" if pretrained in ("None", "", "False") else f"{pretrained}-pretrained".replace(
            "imagenet", "ImageNet")

    def data(p: dict) -> str:
        name = str(p.get("data.dataset"))
        if name == "synthetic":
            return (f"the synthetic temporal benchmark ({p.get('data.num_classes')} classes, "
                    f"{p.get('data.frame_size')} px)")
        return DATASETS.get(name, name)

    return (f"{each(model)} ({each(init)}), {each(lambda p: str(p.get('model.num_frames')))} frames, "
            f"on {each(data)}")


def _number(value, default: float) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _write_meta(meta: dict, out: Path) -> None:
    (out / "sweep.json").write_text(json.dumps(_clean({k: v for k, v in meta.items() if k != "lines"}), indent=1,
                                               default=str))


def _clean(obj):
    """NaN (no value) as JSON null; infinity (e.g. seeds needed for a tie) as a string."""
    if isinstance(obj, float):
        return None if math.isnan(obj) else str(obj) if math.isinf(obj) else obj
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def _rows(spec, runs: dict[str, Any], table: pd.DataFrame) -> list[dict]:
    labels = row_labels(table)
    points: dict[tuple, dict] = {}
    for t in spec.trials:
        key = (t.variant, tuple(t.axes.items()))
        if key not in points:
            points[key] = {"label": labels[len(points)], "variant": t.variant, "baseline": t.baseline,
                           "axes": {k.split(".")[-1]: v for k, v in t.axes.items()}, "runs": []}
        row = points[key]
        run = runs.get(t.hash)
        if run is not None:
            top1 = run.data.metrics.get("top1")
            row["runs"].append({"seed": t.seed, "run_id": run.info.run_id, "hash": t.hash, "top1": top1,
                                "gating": t.config["model"].get("gating")})
    return list(points.values())


def _fingerprints(frame: pd.DataFrame) -> list[dict]:
    """The distinct machine marks of the runs ("?" where a run lacks one: runs logged before a
    mark existed cannot match a reference on it)."""
    if not len(frame) or "tag.hw.cpu" not in frame.columns:
        return []
    marks = pd.DataFrame({k: frame[f"tag.{k}"] if f"tag.{k}" in frame.columns else None for k in FINGERPRINT_KEYS})
    return [{k: str(v) for k, v in r.items()} for _, r in marks.fillna("?").drop_duplicates().iterrows()]


# --- figures ------------------------------------------------------------------------------------


def make_figures(meta: dict, client, out: Path, table: pd.DataFrame | None = None) -> None:
    """Every figure the sweep's data allow; names recorded in ``meta["figures"]``."""
    table = pd.read_csv(out / "table.csv") if table is None else table
    if table_figure(meta, table, out / "table.png"):
        meta["figures"]["table"] = "table.png"
    if fig7(meta, client, out / "fig7.png"):
        meta["figures"]["fig7"] = "fig7.png"
    result = fig8(meta, client, out / "fig8.png")
    if result:
        meta["figures"]["fig8"] = "fig8.png"
        meta["gate_answer"] = result[1]
    if fig9([(meta, table)], out / "fig9.png"):
        meta["figures"]["fig9"] = "fig9.png"


def _row(meta: dict, label: str | None) -> dict | None:
    return next((r for r in meta["rows"] if label in (r["label"], r["variant"])), None)


def comparisons(meta: dict) -> list[tuple[int, int]]:
    """(row, reference row) pairs: each row with a ``baseline`` against that row at the same axis
    values; without any, every row against the first."""
    rows = meta["rows"]
    index = {(r["variant"], json.dumps(r["axes"], sort_keys=True)): i for i, r in enumerate(rows)}
    pairs = []
    for i, r in enumerate(rows):
        j = index.get((r.get("baseline"), json.dumps(r["axes"], sort_keys=True)))
        if r.get("baseline") and j is not None:
            pairs.append((i, j))
    return pairs or [(i, 0) for i in range(1, len(rows))]


def table_figure(meta: dict, table: pd.DataFrame, path: Path):
    labels = [r["label"] for r in meta["rows"]]
    if len(labels) != len(table):
        return None
    pairs = comparisons(meta)
    seeds = [{r["seed"]: r["top1"] for r in row["runs"] if r.get("top1") is not None} for row in meta["rows"]]
    deltas = {}
    for i, j in pairs:
        if seeds[i] and seeds[j]:
            n, method, diff, low, high, _ = judge(seeds[i], seeds[j])
            deltas[i] = (diff, low, high)
    return figures.plot_table(table, path, meta["name"], labels, pairs, deltas)


def _artifacts(client, row: dict, name: str) -> dict[int, dict]:
    """seed -> the JSON artifact ``evaluation/<name>`` of each run of ``row`` that has it."""
    out = {}
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with tempfile.TemporaryDirectory() as tmp:
        for r in row["runs"]:
            try:
                local = client.download_artifacts(r["run_id"], f"evaluation/{name}", tmp)
            except Exception:  # an older run, or one without this artifact
                continue
            out[r["seed"]] = json.loads(Path(local).read_text())
    return out


def fig7(meta: dict, client, path: Path, row: str | None = None, baseline: str | None = None, top: int = 10):
    """The classes ``row`` (default: the first row that is not the baseline) improved most over
    ``baseline`` (default: the spec's), from the seeds both ran."""
    import numpy as np

    baseline = baseline or meta.get("baseline")
    base_row = _row(meta, baseline)
    if base_row is None:
        return None
    candidates = [r for r in meta["rows"] if r is not base_row and not r["axes"]] if row is None else [_row(meta, row)]
    target = next((r for r in candidates if r is not None), None)
    if target is None:
        return None
    a, b = _artifacts(client, target, "confusion.json"), _artifacts(client, base_row, "confusion.json")
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    names = a[seeds[0]].get("class_names") or [str(i) for i in range(len(a[seeds[0]]["confusion"]))]
    improved = figures.most_improved([np.array(a[s]["confusion"]) for s in seeds],
                                     [np.array(b[s]["confusion"]) for s in seeds], names, top)
    improved.to_csv(path.with_suffix(".csv"), index=False)
    return figures.plot_fig7(improved, path, target["label"], base_row["label"], len(seeds))


def fig8(meta: dict, client, path: Path, row: str | None = None):
    """Gate histograms per layer of ``row`` (default: the first row with learned gating that
    recorded them), seeds pooled; returns (path, the bottom/top answer)."""
    candidates = [_row(meta, row)] if row else [r for r in meta["rows"]
                                                if r["runs"] and r["runs"][0].get("gating") == "learned"]
    for target in candidates:
        if target is None:
            continue
        gates = _artifacts(client, target, "gates.json")
        if gates:
            pooled = figures.pool_gates(list(gates.values()))
            (path.with_suffix(".json")).write_text(json.dumps(pooled))
            answer = figures.gate_answer(pooled)
            return figures.plot_fig8(pooled, path, target["label"], len(gates)), answer
    return None


def fig9(sweeps: list[tuple[dict, pd.DataFrame]], path: Path):
    """Top-1 against GFLOPs over the rows of one or more sweeps (each: its meta and table); the
    paper's panel shows the same rows, where the paper printed their sizes."""
    frames = []
    for meta, table in sweeps:
        if not {"top1", "GFLOPs", "params_M"} <= set(table.columns):
            continue
        part = table.copy()
        labels = [r["label"] for r in meta["rows"]]
        part["label"] = labels if len(labels) == len(part) else row_labels(table)
        part["sweep"] = meta["name"]
        frames.append(part)
    if not frames:
        return None
    return figures.plot_fig9(pd.concat(frames, ignore_index=True), path)


# --- console ------------------------------------------------------------------------------------


def console_lines(meta: dict) -> list[str]:
    profile = f" ({meta['profile']} profile)" if meta.get("profile") else ""
    lines = [f"Ran{profile}: {meta['ran']}"] if meta.get("ran") else []
    lines += meta.get("left_out", [])
    if meta["verdicts"]:
        lines.append("Claims (top-1 difference, 95% interval):")
        lines += [f"  {v['summary']}" for v in meta["verdicts"]]
    if meta["tau_rows"] >= 2:
        lines.append(f"Rank agreement with the paper: Kendall tau {tau_text(meta['kendall_tau'])} over {meta['tau_rows']} "
                     f"rows (ours: {meta['order_ours']}; paper: {meta['order_paper']})")
    if meta.get("gate_answer"):
        lines.append(f"Fig. 8, bottom layers differencing and top layers averaging? {meta['gate_answer']}")
    hw = hardware_note(meta)
    if hw:
        lines.append(hw)
    elif meta["shared_cpu"] > 1:
        lines.append(f"latency_ms† was timed with up to {meta['shared_cpu']} trials sharing the CPU: read latency_x.")
    return lines


def reference_machines(path: Path = SYNTHETIC_MD) -> list[dict[str, str]]:
    """The machines docs/synthetic.md gives reference numbers for: each line that carries
    `hw.x=...` / `sw.x=...` marks is one machine."""
    if not path.is_file():
        return []
    marks = (dict(re.findall(r"`((?:hw|sw|ref)\.\w+)=([^`]*)`", line)) for line in path.read_text().splitlines())
    return [m for m in marks if len(m) >= 2]


def hardware_note(meta: dict, refs: list[dict[str, str]] | None = None) -> str:
    """For sweeps on the synthetic benchmark, what reproduces and what does not: top-1 digits only
    where our runs share a machine docs/synthetic.md gives numbers for, on every mark that changes
    them (``FINGERPRINT_KEYS``; a reference that lacks a mark never matches); params and GFLOPs
    anywhere (they are counted); latency nowhere exactly (it is timed), least on a shared CPU."""
    if meta.get("dataset") != "synthetic" or not meta.get("fingerprints"):
        return ""
    refs = reference_machines() if refs is None else refs
    if not refs:
        return ""
    ours = meta["fingerprints"]
    desc = "; ".join(", ".join(f"{k}={fp.get(k, '?')}" for k in FINGERPRINT_KEYS) for fp in ours)
    shared = meta.get("shared_cpu", 1)
    rest = ("params_M and GFLOPs are counted, the same on any machine. Latency is timed and does not reproduce: "
            + (f"up to {shared} trials shared this CPU, so latency_ms† is not even comparable between rows; "
               f"read latency_x (timed side by side)." if shared > 1 else "compare rows through latency_x."))
    for ref in refs:
        if all(fp.get(k) == ref.get(k) for fp in ours for k in FINGERPRINT_KEYS):
            return (f"Reproducibility: these runs ({desc}) match docs/synthetic.md's reference machine "
                    f"{ref.get('ref.name', '')!r} on every mark: there, with this code and these seeds, the top-1 "
                    f"digits (and the verdicts on them) should reproduce exactly. {rest}")
    closest = max(refs, key=lambda ref: sum(ours[0].get(k) == ref.get(k) for k in FINGERPRINT_KEYS))
    differ = [f"{k} {ours[0].get(k, '?')} vs {closest.get(k, 'not recorded')}" for k in FINGERPRINT_KEYS
              if any(fp.get(k) != closest.get(k) for fp in ours)]
    return (f"Reproducibility: these runs ({desc}) match none of docs/synthetic.md's reference machines (closest: "
            f"{closest.get('ref.name', '?')!r}, which differs in {'; '.join(differ)}): the same code and seeds "
            f"give other top-1 digits on other kernels; compare spreads and verdicts, not digits. {rest}")


# --- the index page -----------------------------------------------------------------------------


def load_sweeps(results_dir: str | Path) -> list[tuple[dict, pd.DataFrame, Path]]:
    out = []
    for meta_path in sorted(Path(results_dir).glob("*/sweep.json")):
        meta = json.loads(meta_path.read_text())
        table_path = meta_path.parent / "table.csv"
        table = pd.read_csv(table_path) if table_path.is_file() else pd.DataFrame()
        out.append((meta, table, meta_path.parent))
    return out


HEADER = """<p><b>What compares with the paper.</b> Sizes (<code>params_M</code>, <code>GFLOPs</code>) at the
paper's network size (<code>paper</code> profile); in scaled-down smoke runs, their ratios over the baseline row.
Cost ratios measured side by side (<code>latency_x</code>, <code>train_step_x</code>). The signs of the claims and
the order of the rows (Kendall &tau;). Top-1 values only where the dataset is the paper's (Something-Something V1).</p>
<p><b>What does not.</b> Smoke top-1 (a synthetic temporal benchmark, two epochs from scratch: its
values say nothing about Something-Something). Absolute latency on a shared CPU
(<code>latency_ms&dagger;</code>: trials ran side by side) or against the paper's Titan V.</p>"""

CSS = """body{font-family:system-ui,sans-serif;max-width:1250px;margin:1.5em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:13px;margin:.6em 0}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}.holds{color:#1a7f37;font-weight:600}
.reversed{color:#cf222e;font-weight:600}.unresolved{color:#9a6700;font-weight:600}.note{font-size:13px;color:#444}
img{max-width:100%;border:1px solid #ddd;margin:.4em 0}.sweep{border-top:2px solid #888;margin-top:1.6em}
code{background:#f6f6f6;padding:0 3px}.hw{background:#fff8c5;padding:4px 8px}.ran{font-size:17px;margin:.2em 0}"""


def _verdict_html(v: dict) -> str:
    """The verdict's sentence with its verdict coloured (holds / reversed / unresolved)."""
    kind = v["verdict"] if v["verdict"] in ("holds", "reversed") else "unresolved"
    text, verdict = html.escape(v["summary"]), html.escape(v["verdict"])
    head, sep, tail = text.rpartition(verdict)
    return f'{head}<span class="{kind}">{verdict}</span>{tail}' if sep else text


def _table_html(meta: dict, table: pd.DataFrame, base: str) -> str:
    exp = meta.get("experiment_id")
    shown, _ = shown_table(table, _baselines(meta), meta.get("shared_cpu", 1), meta.get("num_classes"))
    rows = meta["rows"]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in shown.columns) + "<th>MLflow runs</th>"
    body = []
    for i, (_, r) in enumerate(shown.iterrows()):
        cells = "".join(f"<td>{html.escape(v)}</td>" for v in r)
        links = ""
        if i < len(rows) and exp:
            links = " ".join(f'<a href="{html.escape(run_url(base, exp, x["run_id"]))}">seed {x["seed"]}</a>'
                             for x in rows[i]["runs"])
        body.append(f"<tr>{cells}<td>{links}</td></tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _baselines(meta: dict) -> list[str]:
    """The baseline rows' variants (a sweep.json older than ``baselines`` names one)."""
    return meta.get("baselines") or ([meta["baseline"]] if meta.get("baseline") else [])


def _code(text: str) -> str:
    """Markdown `code` spans as HTML, the rest escaped."""
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(text))


def write_index(results_dir: str | Path, base: str | None = None) -> Path:
    """RESULTS_DIR/index.html: every sweep's verdicts, table (rows linked to their MLflow runs)
    and figures, and Fig. 9 over all of them (RESULTS_DIR/fig9.png)."""
    results_dir = Path(results_dir)
    sweeps = load_sweeps(results_dir)
    parts = [f"<h1>GSF ablations: {len(sweeps)} sweep{'s' * (len(sweeps) != 1)} in {html.escape(str(results_dir))}</h1>",
             HEADER]
    if len(sweeps) > 1 and fig9([(m, t) for m, t, _ in sweeps], results_dir / "fig9.png"):
        parts.append('<h2>Fig. 9 over all sweeps</h2><img src="fig9.png" alt="Fig. 9, all sweeps">')
    for meta, table, folder in sweeps:
        ui = base or ui_base(meta.get("tracking_uri", ""))
        rel = folder.name
        exp = meta.get("experiment_id")
        parts.append(f'<div class="sweep"><h2 id="{html.escape(rel)}">{html.escape(meta["name"])}</h2>')
        profile = html.escape(meta["profile"] or "-")
        if meta.get("ran"):
            parts.append(f'<p class="ran">Ran: <b>{html.escape(meta["ran"])}</b> (profile <code>{profile}</code>)</p>')
        spec_note = (" <span class='note'>(the paper's setting, which the <code>paper</code> profile runs)</span>"
                     if meta.get("ran") and meta["profile"] != "paper" else "")
        parts.append(f'<p>Spec: {html.escape(meta["description"])}{spec_note}<br><span class="note">profile <code>'
                     f'{profile}</code>, {html.escape(meta.get("mode") or "")}, '
                     f'rendered {html.escape(meta["generated"])}.')
        if exp:
            parts.append(f' <a href="{html.escape(runs_view_url(ui, exp, None))}">MLflow experiment</a>')
            if meta.get("runs_view"):
                parts.append(f' (<a href="{html.escape(runs_view_url(ui, exp, meta["runs_view"]))}">'
                             f'trials with the key columns</a>)')
            if meta.get("parent_run_id"):
                parts.append(f', <a href="{html.escape(run_url(ui, exp, meta["parent_run_id"]))}">sweep run</a>')
        parts.append("</span></p>")
        hw = hardware_note(meta)
        if hw:
            parts.append(f'<p class="hw">{html.escape(hw)}</p>')
        if meta["verdicts"]:
            items = "".join(f"<li>{_verdict_html(v)}</li>" for v in meta["verdicts"])
            parts.append(f"<h3>Claims</h3><p class='note'>Top-1 difference of the two rows with its 95% interval: "
                         f"paired t over the seeds both rows ran (Welch t where they share none).</p><ul>{items}</ul>")
        if meta["tau_rows"] >= 2:
            parts.append(f"<p>Rank agreement with the paper: Kendall &tau; = {tau_text(meta['kendall_tau'])} over "
                         f"{meta['tau_rows']} rows. Ours: {html.escape(meta['order_ours'])}. "
                         f"Paper: {html.escape(meta['order_paper'])}.</p>")
        if len(table):
            parts.append("<h3>Table</h3>" + _table_html(meta, table, ui))
        dropped = list(left_out(table, meta.get("num_classes")).values()) if len(table) else []
        parts.append("<ul class='note'>" + "".join(f"<li>{_code(n)}</li>" for n in [*meta["notes"].values(), *dropped])
                     + "</ul>")
        parts.append(f'<p class="note">Files: <a href="{rel}/table.md">table.md</a> <a href="{rel}/table.csv">'
                     f'table.csv</a> <a href="{rel}/table.tex">table.tex</a> <a href="{rel}/verdicts.csv">'
                     f'verdicts.csv</a> <a href="{rel}/sweep.json">sweep.json</a></p>')
        captions = {"table": "Δ top-1 and cost over the baseline row, our sizes",
                    "fig7": "Fig. 7: classes most improved over the baseline",
                    "fig8": "Fig. 8: gate values per GSF layer" + (f" — {meta['gate_answer']}" if meta.get("gate_answer") else ""),
                    "fig9": "Fig. 9: accuracy against GFLOPs, marker area ∝ params"}
        for key, name in meta.get("figures", {}).items():
            parts.append(f'<h3>{html.escape(captions.get(key, key))}</h3><img src="{rel}/{name}" alt="{key}">')
        parts.append("</div>")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>GSF ablation report</title>"
            f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>")
    path = results_dir / "index.html"
    path.write_text(page)
    return path
