"""Reports: verdicts on claims, gate recording, per-class evaluation, figures' data, the index page."""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from scipy import stats

from gsf import GSF, build_model
from gsf.model import effective_module
from harness.gates import GateRecorder
from harness.spec import SpecError, load_spec
from reports import figures, render, report
from reports.runs import readable
from reports.verdicts import claim_verdicts, judge, kendall_tau, seeds_to_resolve

ROOT = Path(__file__).resolve().parent.parent


# --- claims and verdicts ------------------------------------------------------------------------


def _spec(tmp_path: Path, claims: list[str], seeds=(0, 1, 2, 3)) -> Path:
    variants = [{"name": n, "set": {"model.gating": g}} for n, g in
                (("GSF", "learned"), ("TSM", 1), ("TSN", 0), ("TDN", -1))]
    path = tmp_path / "claims.yaml"
    path.write_text(yaml.safe_dump({"base": {"model": {"backbone": "resnet18", "module": "gsf"}},
                                    "grid": {"variants": variants}, "seeds": list(seeds), "claims": claims}))
    return path


def _runs(spec, top1: dict[str, list[float]]) -> pd.DataFrame:
    rows = []
    for t in spec.trials:
        values = top1.get(t.variant, [])
        if t.seed < len(values):
            rows.append({"trial_hash": t.hash, "top1": values[t.seed]})
    return pd.DataFrame(rows)


def test_clear_difference_holds_and_a_tie_is_unresolved(tmp_path):
    spec = load_spec(_spec(tmp_path, ["TSM > TSN", "GSF > TDN", "TSN > TSM"]))
    runs = _runs(spec, {"TSM": [80.0, 85.0, 83.0, 90.0], "TSN": [50.0, 49.0, 51.0, 48.0],
                        "GSF": [80.0, 82.0, 84.0, 81.0], "TDN": [82.0, 80.0, 84.0, 81.0]})
    clear, tie, backwards = claim_verdicts(spec, runs)

    assert clear.verdict == "holds" and clear.method == "paired t" and clear.n == 4
    d = np.array([30.0, 36.0, 32.0, 42.0])
    half = stats.t.ppf(0.975, 3) * d.std(ddof=1) / 2
    assert (clear.diff, clear.low, clear.high) == pytest.approx((d.mean(), d.mean() - half, d.mean() + half))
    assert math.isnan(clear.seeds_needed), "a resolved claim needs no more seeds"

    assert tie.diff == 0 and tie.verdict == "unresolved at 4 seeds"
    assert math.isinf(tie.seeds_needed), "a zero difference resolves at no number of seeds"
    assert "unresolved at 4 seeds" in tie.summary and "more than 1000 seeds" in tie.summary

    assert backwards.verdict == "reversed" and backwards.high < 0


def test_seeds_needed_is_where_the_interval_first_excludes_zero():
    # diff 2, sd of the differences 2: t(.975, 5) * 2 / sqrt(6) = 2.10 > 2, t(.975, 6) * 2 / sqrt(7) = 1.85 < 2.
    assert seeds_to_resolve(2.0, 2.0, paired=True) == 7
    n = judge({s: 2.0 + v for s, v in enumerate([-2, 2] * 3)}, {s: 0.0 for s in range(6)})
    assert n[1] == "paired t" and n[3] < 0 < n[4], "6 seeds at this spread do not resolve it"


def test_rows_without_common_seeds_use_welch_and_one_seed_is_unresolved(tmp_path):
    spec = load_spec(_spec(tmp_path, ["TSM > TSN"]))
    by_seed = {t.seed: t for t in spec.trials}
    rows = [{"trial_hash": t.hash, "top1": 70.0 + t.seed} for t in spec.trials if t.variant == "TSM" and t.seed < 2]
    rows += [{"trial_hash": t.hash, "top1": 40.0 + t.seed} for t in spec.trials if t.variant == "TSN" and t.seed >= 2]
    (v,) = claim_verdicts(spec, pd.DataFrame(rows))
    assert v.method == "Welch t" and v.verdict == "holds" and v.diff == pytest.approx(70.5 - 42.5)
    assert by_seed  # the grid has 4 seeds; each row ran two different ones

    one = load_spec(_spec(tmp_path, ["TSM > TSN"], seeds=(0,)))
    (v,) = claim_verdicts(one, _runs(one, {"TSM": [80.0], "TSN": [50.0]}))
    assert v.verdict.startswith("unresolved at 1 seed") and v.diff == 30.0


def test_kendall_tau_of_our_order_against_the_papers():
    table = pd.DataFrame({"variant": list("abcd"), "top1": [4.0, 3, 2, 1], "paper_top1": [40.0, 30, 20, 10]})
    assert kendall_tau(table) == (pytest.approx(1.0), 4)
    table["top1"] = [1.0, 2, 3, 4]
    assert kendall_tau(table)[0] == pytest.approx(-1.0)


@pytest.mark.parametrize("claim", ["GSF >> TSN", "GSF > VGG", "GSF > GSF", "GSF"])
def test_bad_claim_names_file_key_and_allowed_names(tmp_path, claim):
    path = _spec(tmp_path, ["TSM > TSN", claim])
    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = str(info.value)
    assert str(path) in message and "claims[1]" in message and "'A > B'" in message and "'TSN'" in message


def test_bad_claim_exits_2_with_one_line(tmp_path):
    path = _spec(tmp_path, ["TSM > Nope"])
    proc = subprocess.run([sys.executable, "-m", "harness.sweep", str(path), "--results-dir", str(tmp_path / "r")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "claims[0]" in lines[0] and "Traceback" not in proc.stderr


def test_shipped_specs_state_the_papers_claims():
    spec = load_spec(ROOT / "ablations" / "table5_components.yaml", "smoke")
    assert ("GSF", "GSM") in spec.claims and ("TSM", "TSN") in spec.claims and ("TDN", "TSN") in spec.claims
    paper = pd.read_csv(ROOT / "reports" / "paper" / "table5_components.csv").set_index("model")["top1"]
    assert all(paper[a] > paper[b] for a, b in spec.claims), "every shipped claim holds in the paper's own table"


# --- MLflow readability -------------------------------------------------------------------------


@pytest.mark.parametrize("model,name", [
    ({"module": "gsf", "gating": "learned", "fusion": "learned"}, "gsf"),
    ({"module": "gsf", "gating": "learned", "fusion": "sum"}, "gsm"),
    ({"module": "gsm", "gating": "learned", "fusion": "learned"}, "gsm"),
    ({"module": "gsf", "gating": 1, "fusion": "sum"}, "tsm-like"),
    ({"module": "gsf", "gating": -1.0, "fusion": "sum"}, "tdn-like"),
    ({"module": "gsf", "gating": 0, "fusion": "sum"}, "tsn-like"),
    ({"module": "gsf", "gating": 0, "fusion": "learned"}, "tsn-like"),
    ({"module": "gsf", "gating": 1, "fusion": "learned"}, "tsm-like+fusion"),
    ({"module": "gsf", "gating": 0.5, "fusion": "sum"}, "fixed-gate(0.5)"),
    ({"module": "tsm"}, "tsm"),
    ({"module": "none"}, "tsn"),
])
def test_effective_module_names_what_the_module_computes(model, name):
    assert effective_module(model) == name


def test_readable_rounds_measurements_and_keeps_counts():
    assert readable(12.358248999987609) == 12.36  # 4 significant digits unless the name says otherwise
    assert readable(0.048879104) == 0.04888
    assert readable(710924) == 710924 and readable(85.4) == 85.4


# --- gates and per-class evaluation -------------------------------------------------------------


def _reference_gates(module: GSF, x: torch.Tensor) -> torch.Tensor:
    """tanh(conv3d(relu(BN(X)))) per group, as the readable GSF (gsf/modules/gsf.py): (N, T, 2, H, W)."""
    import torch.nn.functional as F

    nt, c, h, w = x.shape
    t, half = module.num_frames, module.processed // 2
    x5 = x.view(nt // t, t, c, h, w).permute(0, 2, 1, 3, 4)[:, :module.processed]
    bn = module.gate_norm
    u = F.relu(F.batch_norm(x5, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps))
    kernels = module.gate_weight.view(2, half, 3, 3, 3)  # stored with the 27 taps flattened
    gates = [torch.tanh(F.conv3d(u[:, g * half:(g + 1) * half], kernels[g:g + 1],
                                 module.gate_bias[g:g + 1], padding=1)) for g in range(2)]
    return torch.cat(gates, dim=1).permute(0, 2, 1, 3, 4)


@pytest.mark.parametrize("shift_ratio", [0.5, 1.0])  # 0.5: the folded-BatchNorm path
def test_gate_probe_sees_the_tanh_gate_planes_and_changes_nothing(shift_ratio):
    torch.manual_seed(0)
    module = GSF(16, 4, shift_ratio=shift_ratio).eval()
    with torch.no_grad():
        module.gate_norm.running_mean.uniform_(-0.5, 0.5)
        module.gate_norm.running_var.uniform_(0.5, 2.0)
    x = torch.randn(8, 16, 6, 6)
    seen = []
    handle = module.gate_probe.register_forward_hook(lambda m, args, out: seen.append(args[0].clone()))
    with torch.no_grad():
        y_probed = module(x)
    handle.remove()
    with torch.no_grad():
        y_plain = module(x)
    assert torch.equal(y_probed, y_plain), "the probe only looks"
    assert "gate_probe" not in " ".join(module.state_dict())
    (gate,) = seen
    assert gate.shape == (2, 4, 2, 6, 6)
    torch.testing.assert_close(gate, _reference_gates(module, x), atol=1e-5, rtol=1e-4)


def test_gate_recorder_histograms_every_learned_gsf_layer_in_order():
    torch.manual_seed(0)
    model = build_model(backbone="resnet18", module="gsf", num_classes=4, num_frames=4, width_mult=0.125,
                        shift_ratio=0.5).eval()
    clips = torch.randn(2, 4, 3, 32, 32)
    seen = {}
    hooks = [m.gate_probe.register_forward_hook(lambda mod, args, out, n=n: seen.setdefault(n, args[0].clone()))
             for n, m in model.named_modules() if isinstance(m, GSF)]
    with torch.no_grad(), GateRecorder(model) as recorder:
        model(clips)
    for h in hooks:
        h.remove()
    summary = recorder.summary()
    names = [layer["name"] for layer in summary["layers"]]
    assert names == list(seen) and len(names) == 8, "one entry per GSF, bottom to top"
    for layer in summary["layers"]:
        gate = seen[layer["name"]]
        assert sum(layer["counts"]) == gate.numel() == layer["values"]
        assert layer["mean"] == pytest.approx(gate.mean().item(), abs=1e-6)
        assert layer["negative"] == pytest.approx((gate < 0).float().mean().item())
    assert not any(m._forward_hooks for m in model.modules()), "hooks are removed afterwards"
    fixed = build_model(backbone="resnet18", module="gsf", num_classes=4, num_frames=4, width_mult=0.125, gating=1)
    assert GateRecorder(fixed).probes == [], "fixed gating has no gate to record"


def test_evaluate_keeps_per_class_counts_predictions_and_gates():
    from harness.data import DataConfig, build_datasets
    from harness.train import _loader, evaluate

    torch.manual_seed(0)
    cfg = DataConfig.model_validate({"dataset": "synthetic", "num_classes": 4, "train_size": 8, "val_size": 12,
                                     "frame_size": 32})
    _, val = build_datasets(cfg, num_frames=4)
    model = build_model(backbone="resnet18", module="gsf", num_classes=4, num_frames=4, width_mult=0.125)
    out = evaluate(model, _loader(val, 5, False, 0, 0), torch.device("cpu"), amp=False)
    confusion = np.array(out["confusion"])
    assert confusion.shape == (4, 4) and confusion.sum() == 12
    assert confusion.sum(1).tolist() == [3, 3, 3, 3], "row = true class"
    assert 100 * np.trace(confusion) / 12 == pytest.approx(out["top1"])
    assert out["labels"] == [val.label(i) for i in range(12)] and len(out["predictions"]) == 12
    assert all(confusion[t, p] > 0 for t, p in zip(out["labels"], out["predictions"]))
    assert out["class_names"][:2] == ["moving right", "moving left"]
    assert len(out["gates"]["layers"]) == 8
    tsm = build_model(backbone="resnet18", module="tsm", num_classes=4, num_frames=4, width_mult=0.125)
    assert "gates" not in evaluate(tsm, _loader(val, 5, False, 0, 0), torch.device("cpu"), amp=False)


# --- figures' data ------------------------------------------------------------------------------


def test_most_improved_classes_name_the_baselines_confusion():
    names = ["moving right", "moving left", "growing", "shrinking"]
    tsn = np.array([[5, 5, 0, 0], [7, 3, 0, 0], [0, 0, 9, 1], [0, 0, 1, 9]])  # TSN confuses the pair
    gsf = np.array([[10, 0, 0, 0], [1, 9, 0, 0], [0, 0, 9, 1], [0, 1, 0, 9]])
    best = figures.most_improved([gsf, gsf], [tsn, tsn], names, k=2)
    assert list(best["class"]) == ["moving left", "moving right"]
    assert list(best["gain"]) == [12, 10] and list(best["baseline_prediction"]) == ["moving right", "moving left"]


def test_gate_answer_reads_bottom_and_top_layers():
    def gates(means):
        return {"layers": [{"mean": m} for m in means]}

    assert figures.gate_answer(gates([-0.3, -0.1, 0.2, 0.4])).startswith("yes")
    assert figures.gate_answer(gates([0.3, 0.2, 0.1, 0.0])).startswith("no")
    pooled = figures.pool_gates([
        {"edges": [-1, 0, 1], "layers": [{"name": "a", "counts": [1, 3], "values": 4, "mean": 0.5, "std": 0.1,
                                          "negative": 0.25}]},
        {"edges": [-1, 0, 1], "layers": [{"name": "a", "counts": [3, 1], "values": 4, "mean": -0.5, "std": 0.1,
                                          "negative": 0.75}]}])
    layer = pooled["layers"][0]
    assert layer["counts"] == [4, 4] and layer["mean"] == pytest.approx(0.0) and layer["negative"] == 0.5
    assert layer["std"] == pytest.approx(math.sqrt(0.01 + 0.25))


# --- the index page -----------------------------------------------------------------------------


def _fake_results(tmp_path: Path) -> Path:
    results = tmp_path / "results"
    sweep = results / "t5"
    sweep.mkdir(parents=True)
    table = pd.DataFrame({"variant": ["GSF", "TSN"], "runs": ["2/2", "2/2"], "top1": [85.0, 50.0],
                          "params_M": [0.71, 0.70], "GFLOPs": [0.049, 0.048], "latency_ms": [9.0, 4.0],
                          "latency_x": [1.1, np.nan], "paper_top1": [48.44, 17.25]})
    table.to_csv(sweep / "table.csv", index=False)
    rows = [{"label": v, "variant": v, "baseline": "TSN" if v == "GSF" else None, "axes": {},
             "runs": [{"seed": s, "run_id": f"{v.lower()}{s}", "top1": t + s, "gating": "learned"} for s in (0, 1)]}
            for v, t in (("GSF", 85.0), ("TSN", 50.0))]
    verdict = {"claim": "GSF > TSN", "point": "", "verdict": "holds",
               "summary": "GSF > TSN: +35.00 [+35.00, +35.00] (paired t, 2 seeds) → holds; paper +31.19"}
    meta = {"name": "t5", "description": "a Table 5", "profile": "smoke", "mode": "train + measure",
            "tracking_uri": "sqlite:///x.db", "experiment_id": "7", "parent_run_id": "p1", "baseline": "TSN",
            "dataset": "synthetic", "rows": rows, "verdicts": [verdict], "kendall_tau": 1.0, "tau_rows": 2,
            "order_ours": "GSF > TSN", "order_paper": "GSF > TSN", "shared_cpu": 2, "runs_view": "v",
            "notes": {"top1": "top1 is on `synthetic`"}, "fingerprints": [{"hw.cpu": "X", "sw.torch": "1", "hw.threads": "1"}],
            "figures": {}, "generated": "now"}
    (sweep / "sweep.json").write_text(json.dumps(meta))
    made = report.table_figure(meta, table, sweep / "table.png")
    assert made == sweep / "table.png" and made.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    meta["figures"]["table"] = "table.png"
    (sweep / "sweep.json").write_text(json.dumps(meta))
    return results


def test_index_links_rows_to_mlflow_runs_and_says_what_compares(tmp_path):
    results = _fake_results(tmp_path)
    page = report.write_index(results, "http://mlflow.example:5000").read_text()
    assert 'href="http://mlflow.example:5000/#/experiments/7/runs/gsf1?workflowType=machine_learning"' in page
    assert "viewStateShareKey=v" in page and "latency_ms†" in page
    assert "What compares with the paper" in page and "What does not" in page
    assert "GSF &gt; TSN: +35.00 [+35.00, +35.00] (paired t, 2 seeds) → <span class=\"holds\">holds</span>" in page
    assert '<img src="t5/table.png"' in page and "<code>synthetic</code>" in page
    proc = subprocess.run([sys.executable, "-m", "reports", str(results)], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert proc.returncode == 0 and "index.html" in proc.stdout
    assert "http://127.0.0.1:5000/#/experiments/7/runs/tsn0" in (results / "index.html").read_text()


def test_reports_cli_without_a_sweep_exits_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "reports", str(tmp_path)], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert proc.returncode == 2 and "no sweep found" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "reports", "fig7", str(tmp_path)], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and "sweep.json" in proc.stderr and "Traceback" not in proc.stderr


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="headless check of index.html needs Debian's chromium "
                                             "(apt-get install chromium); make report-screenshot does the same")
def test_index_page_renders_in_a_real_browser(tmp_path):
    from PIL import Image

    results = _fake_results(tmp_path)
    page = report.write_index(results)
    shot = tmp_path / "index.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,1400",
                    page.as_uri()], capture_output=True, timeout=120, check=True)
    image = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert image.shape[:2] == (1400, 1200)
    # The table figure is drawn (its orange paper bars are on the page), not a broken-image box.
    orange = (abs(image[..., 0] - 255) < 20) & (abs(image[..., 1] - 127) < 25) & (image[..., 2] < 40)
    assert orange.sum() > 500, "the figure's paper bars are not visible"


def test_exact_reproduction_is_claimed_only_where_every_mark_matches_a_reference(tmp_path):
    """The CPU's name is not enough (two 'AMD EPYC' VMs, AVX2 and AVX-512, gave other Table 5
    numbers): a sweep is told its reference numbers reproduce exactly only when the kernels'
    marks match too, and told which marks differ otherwise."""
    from harness.run_info import fingerprint

    ours = fingerprint()
    assert ours["hw.cpu_capability"] == torch.backends.cpu.get_cpu_capability() and ours["hw.cpu_capability"]
    assert ours["sw.torch_git"] == torch.version.git_version[:12]
    marks = {k: ours[k] for k in report.FINGERPRINT_KEYS}
    doc = tmp_path / "synthetic.md"
    doc.write_text("Numbers of two machines:\n\n"
                   + "- " + " ".join(f"`{k}={v}`" for k, v in {"ref.name": "here", **marks}.items()) + ": GSF 84.3\n"
                   + "- `ref.name=other kernels` `hw.cpu=" + marks["hw.cpu"] + "` `hw.cpu_capability=NOPE` "
                   "`hw.threads=" + marks["hw.threads"] + "` `sw.torch=" + marks["sw.torch"] + "`: GSF 79.5\n")
    refs = report.reference_machines(doc)
    assert [r["ref.name"] for r in refs] == ["here", "other kernels"] and refs[0]["hw.cpu"] == marks["hw.cpu"]
    meta = {"dataset": "synthetic", "fingerprints": [marks]}
    assert "match docs/synthetic.md's reference machine 'here' on every mark: there, with this code and these seeds, " \
        "the top-1 digits (and the verdicts on them) should reproduce exactly" in report.hardware_note(meta, refs)
    # the same CPU name with other kernels: no claim, and what differs is said
    note = report.hardware_note(meta, refs[1:])
    assert "reproduce exactly" not in note and "match none" in note
    assert f"hw.cpu_capability {marks['hw.cpu_capability']} vs NOPE" in note and "sw.torch_git" in note
    # one run of two on another thread count, or runs logged before a mark existed ("?"): no claim
    for other in ({**marks, "hw.threads": "7"}, {**marks, "sw.torch_git": "?"}):
        assert "reproduce exactly" not in report.hardware_note({**meta, "fingerprints": [marks, other]}, refs)
    assert report.hardware_note({"dataset": "something-v1", "fingerprints": [marks]}, refs) == ""


# --- what the report page and the printed table show (issue 22) ----------------------------------

T5_TOP1 = {"GSF": [80.4, 91.4, 81.2], "GSM": [82.2, 77.0, 79.6], "TSM": [92.2, 75.8, 91.8],
           "TDN": [83.2, 63.8, 85.6], "TSN": [50.4, 45.0, 47.0]}
T5_SIZE = {"GSF": (0.710924, 0.048879), "GSM": (0.710924, 0.048879)}  # the rest: (0.704396, 0.048035)


class _NoStore:
    """An MLflow client with no experiment and no artifacts: the report from the runs alone."""

    def get_experiment_by_name(self, name):
        return None

    def download_artifacts(self, run_id, path, dst):
        raise OSError("no artifacts")


def _t5_report(tmp_path: Path) -> tuple[dict, Path]:
    """Table 5's smoke sweep reported from stand-in runs with its real sizes and timings; their
    params are what the profile resolved to, as harness.tracking logs them (strings)."""
    spec = load_spec(ROOT / "ablations" / "table5_components.yaml", "smoke")
    runs = {}
    for t in spec.trials:
        params_m, gflops = T5_SIZE.get(t.variant, (0.704396, 0.048035))
        metrics = {"top1": T5_TOP1[t.variant][t.seed], "top5": 100.0 - 0.2 * (t.seed == 1), "params_M": params_m,
                   "GFLOPs": gflops, "latency_ms": {"GSF": 9.9, "GSM": 8.4}.get(t.variant, 4.7) + t.seed}
        if t.baseline:
            metrics["latency_x"] = 1.5
        params = {f"{section}.{k}": str(v) for section, keys in t.config.items() if isinstance(keys, dict)
                  for k, v in keys.items()}
        tags = {"cpu_shared_by": "2", "hw.cpu": "X", "hw.cpu_capability": "AVX2", "hw.threads": "1",
                "sw.torch": "2", "sw.torch_git": "g"}
        runs[t.hash] = SimpleNamespace(info=SimpleNamespace(run_id=f"{t.variant}{t.seed}"),
                                       data=SimpleNamespace(metrics=metrics, params=params, tags=tags))
    out = tmp_path / "results" / spec.name
    meta = report.report_sweep(spec, _NoStore(), runs, out, "sqlite:///none.db", mode="train + measure")
    return meta, out


def test_report_names_what_ran_marks_the_baseline_and_gives_size_ratios(tmp_path):
    meta, out = _t5_report(tmp_path)
    ran = "ResNet-18 x0.25 (from scratch), 8 frames, on the synthetic temporal benchmark (12 classes, 40 px)"
    assert meta["ran"] == ran and "BNInception" in meta["description"]
    assert meta["lines"][0] == f"Ran (smoke profile): {ran}"
    assert report.console_lines({**meta, "profile": ""})[0] == f"Ran: {ran}", "a spec without profiles"
    table = pd.read_csv(out / "table.csv").set_index("variant")
    assert list(table.columns[table.columns.get_loc("params_M"):][:4]) == ["params_M", "params_x", "GFLOPs", "gflops_x"]
    assert table.loc["GSF", "params_x"] == pytest.approx(0.710924 / 0.704396)
    assert table.loc["GSF", "gflops_x"] == pytest.approx(0.048879 / 0.048035)
    assert (table.loc["TSN", ["params_x", "gflops_x", "latency_x"]] == 1.0).all(), "the baseline's own ratios"
    assert table.loc["TSM", "latency_x"] == 1.5, "the trials' side-by-side timing is kept"
    md = (out / "table.md").read_text().split("\n\n")[0]  # what the sweep prints
    cells = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in md.splitlines()[2:]}
    assert md.splitlines()[0].split("|")[5:12] == ["   params_M ", "   params_x ", "   GFLOPs ", "   gflops_x ",
                                                   "   latency_ms† ", "   latency_x ", "   paper_top1 "]
    assert cells["TSN (baseline)"] == ["3/3", "47.5", "2.7", "0.704", "1.00", "0.0480", "1.00", "5.70", "1.00", "17.25"]
    assert cells["GSF"] == ["3/3", "84.3", "6.1", "0.711", "1.01", "0.0489", "1.02", "10.9", "1.50", "48.44"]
    page = report.write_index(out.parent).read_text()
    assert f"Ran: <b>{ran}</b>" in page and "Spec: Table 5 — GSF&#x27;s components" in page
    assert "<td>TSN (baseline)</td>" in page and "<td>0.0489</td><td>1.02</td>" in page
    paper = [{"model.backbone": b, "model.pretrained": "imagenet", "model.num_frames": "8",
              "data.dataset": "something-v1"} for b in ("bninception", "resnet50", "bninception")]
    assert report.ran_text(paper) == "BNInception / ResNet-50 (ImageNet-pretrained), 8 frames, on Something-Something V1"


def test_one_rounding_rule_for_page_markdown_and_console(tmp_path):
    cases = {("top1", 84.3333): "84.3", ("top1_std", 6.1289): "6.1", ("GFLOPs", 0.048879): "0.0489",
             ("GFLOPs", 16.4612): "16.46", ("params_M", 0.710924): "0.711", ("params_M", 23.97): "23.97",
             ("latency_ms†", 9.934): "9.93", ("latency_ms", 123.4): "123", ("gflops_x", 1.01757): "1.02",
             ("paper_top1", 48.44): "48.44", ("shift_ratio", 0.125): "0.125", ("num_blocks", np.int64(4)): "4",
             ("latency_x", float("nan")): "", ("variant", "GSF"): "GSF"}
    assert {key: render.cell(*key) for key in cases} == cases
    meta, out = _t5_report(tmp_path)
    md = (out / "table.md").read_text()
    page = report.write_index(out.parent).read_text()
    for text in ("0.0489", "84.3", "0.704"):  # GSF's GFLOPs, its top-1, TSN's params
        assert f" {text} " in md and f"<td>{text}</td>" in page
    assert "0.05 " not in md and "0.0488" not in page and "84.33" not in md + page


def test_columns_that_carry_nothing_are_left_out_with_a_footnote(tmp_path):
    table = pd.DataFrame({"variant": ["A", "B"], "top1": [60.0, 70.0], "top5": [99.8, 100.0], "top5_std": [0.2, 0.0],
                          "params_M": [1.0, 1.0], "GFLOPs": [2.0, 2.1]})
    assert render.left_out(table, 12) == {
        "top5": "top5 is left out: 99.8–100.0 in every row (12 classes), saturated; table.csv keeps it.",
        "params_M": "params_M is left out: 1.00 in every row."}
    shown, notes = render.shown_table(table, num_classes=12)
    assert list(shown.columns) == ["variant", "top1", "GFLOPs"] and len(notes) == 2
    assert "top5" in render.left_out(table.assign(top5=[80.0, 90.0]), 5), "5 classes: top-5 is 100 by construction"
    assert "top5" not in render.left_out(table.assign(top5=[80.0, 90.0]), 12)
    meta, out = _t5_report(tmp_path)
    md = (out / "table.md").read_text()
    assert "top5" not in md.split("\n\n")[0] and "- top5 is left out: 99.9 in every row (12 classes), saturated" in md
    assert "top5 is left out" in " ".join(meta["lines"])
    assert "<li>top5 is left out: 99.9 in every row" in report.write_index(out.parent).read_text()


def test_fig9_labels_apart_cost_from_zero_and_the_papers_same_rows():
    import matplotlib.pyplot as plt
    from matplotlib.text import Annotation, Text

    paper = pd.read_csv(ROOT / "reports" / "paper" / "table2_bninception_shift_ratio.csv")
    points = pd.DataFrame({"sweep": "t2", "label": [f"{p:g}%" for p in paper["shift_percent"]],
                           "top1": [80.0, 80.2, 80.1, 80.3, 80.25], "GFLOPs": [0.0480, 0.0481, 0.0482, 0.0484, 0.0489],
                           "params_M": 0.70, "paper_top1": paper["top1"], "paper_GFLOPs": paper["GFLOPs"],
                           "paper_params_M": paper["params_M"]})
    fig = figures.fig9_figure(points)
    fig.tight_layout()
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ours, theirs = fig.axes[:2]
    for ax in (ours, theirs):
        labels = [t for t in ax.texts if isinstance(t, Annotation)]
        assert sorted(t.get_text() for t in labels) == sorted(points["label"]), "the table's own rows, no Table 8"
        boxes = [Text.get_window_extent(t, renderer) for t in labels]  # the words, not the leader line
        assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:]), "labels collide"
        assert ax.get_xlim()[0] == 0, "GFLOPs start at 0: a 2% difference looks like 2%"
        low, high = ax.get_ylim()
        assert high - low >= 0.2 * (low + high) / 2, "top-1 spans at least ±10% around the data"
    plt.close(fig)
    fig = figures.fig9_figure(points.drop(columns=["paper_GFLOPs", "paper_params_M"]))
    message = " ".join(t.get_text() for t in fig.axes[1].texts)
    assert message == "the paper prints no params or GFLOPs for these rows\nits top-1: 12.5% 45.62, 25% 47.09, " \
                      "50% 47.65, 75% 48.14, 100% 48.44"
    plt.close(fig)
    block = 1.51 / 3  # the three close labels form one block round their mean
    assert figures.spread([0.5, 0.51, 0.2, 0.5], 0.05) == pytest.approx([block - 0.05, block + 0.05, 0.2, block])


def test_reproducibility_banner_says_what_reproduces_and_what_does_not():
    marks = {"hw.cpu": "X", "hw.cpu_capability": "AVX2", "hw.threads": "1", "sw.torch": "2", "sw.torch_git": "g"}
    refs = [{"ref.name": "here", **marks}]
    meta = {"dataset": "synthetic", "fingerprints": [marks], "shared_cpu": 2}
    note = report.hardware_note(meta, refs)
    assert "the top-1 digits (and the verdicts on them) should reproduce exactly" in note
    assert "its numbers should reproduce exactly" not in note, "latency does not"
    assert note.endswith("params_M and GFLOPs are counted, the same on any machine. Latency is timed and does not "
                         "reproduce: up to 2 trials shared this CPU, so latency_ms† is not even comparable between "
                         "rows; read latency_x (timed side by side).")
    other = report.hardware_note(meta, [{**refs[0], "hw.cpu_capability": "AVX512"}])
    assert "reproduce exactly" not in other and "give other top-1 digits" in other and "Latency is timed" in other
