"""Reports: verdicts on claims, gate recording, per-class evaluation, figures' data, the index page."""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

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
from reports import figures, report
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
    assert readable(12.358248999987609) == 12.358
    assert readable(0.048879104) == 0.048879
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
    assert 'href="http://mlflow.example:5000/#/experiments/7/runs/gsf1"' in page
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
    assert "match docs/synthetic.md's reference 'here' on every mark: its numbers should reproduce exactly" in \
        report.hardware_note(meta, refs)
    # the same CPU name with other kernels: no claim, and what differs is said
    note = report.hardware_note(meta, refs[1:])
    assert "reproduce exactly" not in note and "match none" in note
    assert f"hw.cpu_capability {marks['hw.cpu_capability']} vs NOPE" in note and "sw.torch_git" in note
    # one run of two on another thread count, or runs logged before a mark existed ("?"): no claim
    for other in ({**marks, "hw.threads": "7"}, {**marks, "sw.torch_git": "?"}):
        assert "reproduce exactly" not in report.hardware_note({**meta, "fingerprints": [marks, other]}, refs)
    assert report.hardware_note({"dataset": "something-v1", "fingerprints": [marks]}, refs) == ""
