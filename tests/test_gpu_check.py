"""benchmarks/gpu_check.py, the script run once on a new GPU machine, run here on CPU at --tiny sizes.

It gets one run on a GPU, by someone with a tight budget, so what can break must break here first.
One --tiny run as a user does it (a subprocess; ~40 s, so in make test-slow, which .ci/run runs)
checks every item kind, the fast-vs-readable
agreement, 2 gloo DDP ranks, the budget, the exit codes, and the report against its own JSON,
with ``--compile-backend eager`` (dynamo's capture and graph breaks without inductor's minutes of
C++ code generation on 2 cores: a cold inductor compile of one thin GSF ResNet-50 took 39 s for
the forward and 222 s for the training step here). The runner's own behaviour (a failing item,
CUDA out of memory, the report while an item runs) is tested in-process with stand-in items.
``make test-slow`` runs the --tiny default as is, inductor included.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import time

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_check.py")
FAST_ITEMS = ["eager-fp16-*", "fit-*", "data-*", "impl-*", "eager-bf16-*", "compiled-fp16-resnet50-*-gsf", "ddp-gsf-resnet50"]
FORBIDDEN = ("fvcore", "ray", "mlflow", "av")


def run_script(out, *args, timeout=300, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SCRIPT, *args, "--out", str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=None if env is None else {**os.environ, **env})


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gc():
    return load_script()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One --tiny CPU run of every item kind (compiled with the eager backend): (process, json, md, s)."""
    out = tmp_path_factory.mktemp("gpu_check")
    t0 = time.monotonic()
    proc = run_script(out, "--device", "cpu", "--tiny", "--compile-backend", "eager", "--budget-s", "600",
                      "--only", *FAST_ITEMS)
    seconds = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(out / "gpu_check.json") as f:
        data = json.load(f)
    return proc, data, (out / "gpu_check.md").read_text(), seconds


def items(data) -> dict:
    return {i["name"]: i for i in data["items"]}


@pytest.mark.slow  # make test-slow (.ci/run runs it): make test stays within 8 minutes on 2 cores
def test_every_selected_item_ran_ok(tiny_run, gc):
    proc, data, md, seconds = tiny_run
    by_name = items(data)
    assert set(by_name) == {i.name for i in gc.plan()}
    chosen = [n for n in by_name if gc.selected(gc.Item(n, 0, (0, 0), None), FAST_ITEMS)]
    assert len(chosen) == 12, chosen  # environment, 2+2 eager, the training loop, data, 2 impl, 2 compiled, ddp
    for name in chosen:
        assert by_name[name]["status"] == "ok", (name, by_name[name].get("error"))
        assert by_name[name]["seconds"] > 0
        assert f"] {name}" in proc.stdout  # one progress line each
    for name in set(by_name) - set(chosen):
        assert (by_name[name]["status"], by_name[name]["reason"]) == ("not run", "not selected (--only)")
    assert data["complete"] and data["finished"]
    assert data["imported_forbidden"] == []
    assert data["environment"]["gsf_import"] == "ok" and data["environment"]["device"] == "cpu"
    assert "**Failed:**" not in md and "FAILED" not in md


@pytest.mark.slow  # make test-slow (.ci/run runs it): make test stays within 8 minutes on 2 cores
def test_times_are_positive_and_tsn_is_the_unit(tiny_run):
    _, data, _, _ = tiny_run
    records = [r for i in data["items"] if i["status"] == "ok" for r in (i["results"] or {}).get("records", [])]
    assert {(r["mode"], r["phase"], r["dtype"]) for r in records} >= {
        ("eager", "forward", "fp16"), ("eager", "train", "fp16"), ("eager", "train", "bf16"),
        ("compiled (eager)", "forward", "fp16"), ("compiled (eager)", "train", "fp16")}
    for r in records:
        assert all(t > 0 and math.isfinite(t) for t in r["times_ms"]) and r["ms"] > 0 and r["first_s"] > 0
        assert r["ms"] == statistics.median(r["times_ms"])
        assert r["batch"] == (1 if r["phase"] == "forward" else 2)
        assert r["params_M"] > 0
        if r["model"] == "TSN":
            assert r["x_tsn"] == 1.0
        else:
            assert r["x_tsn"] > 0 and math.isfinite(r["x_tsn"])
    compiled = [r for r in records if r["mode"].startswith("compiled")]
    assert len(compiled) == 4 and all(r["compile_s"] > 0 for r in compiled)
    # ResNet-50's GSF and GSM add parameters; TSM adds none
    params = {r["model"]: r["params_M"] for r in records if r["backbone"] == "resnet50" and r["mode"] == "eager"}
    assert params["TSM"] == params["TSN"] < params["GSM"] < params["GSF"]


@pytest.mark.slow  # make test-slow (.ci/run runs it): make test stays within 8 minutes on 2 cores
def test_report_shows_the_json_numbers_and_table12(tiny_run, gc):
    _, data, md, _ = tiny_run
    assert "| paper, Table 12 | Titan V | 12.40 | 7.59 | 1.63 |" in md
    for backbone in gc.BACKBONES:
        rec = {(r["model"], r["phase"]): r for r in items(data)[f"eager-fp16-{backbone}"]["results"]["records"]}
        gsf, tsm = rec[("GSF", "forward")], rec[("TSM", "forward")]
        ratio = statistics.median(a / b for a, b in zip(gsf["times_ms"], tsm["times_ms"]))
        assert (f"| ours, {backbone}, eager fp16 | cpu | {gsf['ms']:.2f} | {tsm['ms']:.2f} | {ratio:.3f} |") in md
        for model in ("TSN", "TSM", "GSM", "GSF"):
            f, t = rec[(model, "forward")], rec[(model, "train")]
            row = f"| {model} | {f['params_M']:.2f} | {f['ms']:.2f} | {f['x_tsn']:.3f} | {t['ms']:.2f} | {t['x_tsn']:.3f} |"
            assert row in md, row
        assert f"### {backbone}, fp16 autocast, eager" in md and f"### {backbone}, bf16 autocast, eager" in md
    assert "### resnet50, fp16 autocast, compiled (eager)" in md
    gsf_rows = {r["phase"]: r for r in items(data)["eager-fp16-resnet50"]["results"]["records"] if r["model"] == "GSF"}
    verdict = "PASS" if max(gsf_rows["forward"]["x_tsn"], gsf_rows["train"]["x_tsn"]) <= 1.15 else "FAIL"
    assert (f"| resnet50 | eager fp16 | {gsf_rows['forward']['x_tsn']:.3f} | {gsf_rows['train']['x_tsn']:.3f} "
            f"| {verdict} |") in md
    assert "| **resnet50** | **eager or compiled** |" in md and "| **bninception** | **eager or compiled** |" in md


@pytest.mark.slow  # make test-slow (.ci/run runs it): make test stays within 8 minutes on 2 cores
def test_fast_and_readable_gsf_agree_on_cpu(tiny_run):
    _, data, md, _ = tiny_run
    for backbone in ("resnet50", "bninception"):
        res = items(data)[f"impl-{backbone}"]["results"]
        assert res["fast_error"] is None
        a = res["agreement"]
        assert a["agrees"], a
        for what in ("logits", "layer_output"):
            assert a[what]["fast32_vs_ref32"] < 1e-4  # same arithmetic up to summation order
        assert a["layer_output"]["fast16_vs_ref16"] < a["tolerance"]["fp16"]
        assert {r["model"] for r in res["records"]} == {"TSN", "GSF readable", "GSF fast"}
        rec = res["recommendation"]
        assert rec["pick"] in ("fast", "reference") and rec["auto_picks_today"] == "fast"  # CPU: auto is fast
        assert set(rec["fast_over_readable"]) == {"forward", "train"}
        assert f"**auto should pick: {rec['pick']}**" in md
    assert "**Recommendation:** impl=\"auto\" on cpu should pick" in md


@pytest.mark.slow  # make test-slow (.ci/run runs it): make test stays within 8 minutes on 2 cores
def test_ddp_runs_two_gloo_ranks(tiny_run):
    _, data, md, _ = tiny_run
    ddp = items(data)["ddp-gsf-resnet50"]["results"]
    assert (ddp["world_size"], ddp["backend"]) == (2, "gloo")
    assert len(ddp["per_rank_ms"]) == 2 and all(t > 0 for t in ddp["per_rank_ms"])
    assert ddp["ddp_ms"] == max(ddp["per_rank_ms"]) and ddp["single_device_ms"] > 0
    assert f"DDP (gloo, 2 ranks, batch 2 per rank): {ddp['ddp_ms']:.2f} ms" in md


def test_no_budget_runs_nothing_and_still_reports(tmp_path):
    proc = run_script(tmp_path, "--device", "cpu", "--tiny", "--budget-s", "0", timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    reason = "time budget (--budget-s 0); run with a larger --budget-s for it"
    assert [i["status"] for i in data["items"]] == ["not run"] * len(data["items"])
    assert {i["reason"] for i in data["items"]} == {reason}
    md = (tmp_path / "gpu_check.md").read_text()
    assert reason in md and "ran to the end" in md and "No timing item ran." in md


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_no_cuda_device_is_one_line_and_exit_2(tmp_path):
    proc = run_script(tmp_path, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: no CUDA device visible to torch (torch "), proc.stderr
    assert "CUDA_VISIBLE_DEVICES=" in lines[0]
    assert not (tmp_path / "gpu_check.json").exists()


def test_bad_command_line_exits_2(tmp_path):
    proc = run_script(tmp_path, "--device", "cpu", "--only", "no-such-item", timeout=120)
    assert proc.returncode == 2 and "matches no item" in proc.stderr


# -- the runner, in-process with stand-in items -----------------------------------------------


def stand_in_bench(gc, tmp_path, items, budget="100"):
    args = gc.parse_args(["--device", "cpu", "--tiny", "--out", str(tmp_path), "--budget-s", budget])
    return gc.Bench(args, time.monotonic(), items)


def test_a_failing_item_is_recorded_and_the_next_runs(gc, tmp_path, capsys):
    seen = {}

    def oom(bench):
        bench.models.get("resnet50", "TSN")  # a model is resident when the device runs out
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    def after(bench):
        seen["models_left"] = len(bench.models._models)
        return {"value": 1}

    plan = [gc.Item("oom", 0, (1, 1), oom, "x"), gc.Item("after", 1, (1, 1), after, "y")]
    bench = stand_in_bench(gc, tmp_path, plan)
    gc.run_all(bench, plan)
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    oom_item, after_item = data["items"]
    assert oom_item["status"] == "failed" and oom_item["error"]["type"] == "OutOfMemoryError"
    assert "Tried to allocate" in oom_item["error"]["message"] and oom_item["error"]["traceback_tail"]
    assert after_item["status"] == "ok" and after_item["results"] == {"value": 1}
    assert seen["models_left"] == 0  # the failure freed every model
    md = (tmp_path / "gpu_check.md").read_text()
    assert md.index("**Failed:**") < md.index("## Timings")  # failures at the top
    assert "`oom`: OutOfMemoryError: CUDA out of memory" in md
    assert "oom" in capsys.readouterr().out


def test_the_report_shows_the_running_item(gc, tmp_path):
    """A run killed inside an item (its time limit) leaves files that say where it was."""
    seen = {}

    def peek(bench):
        seen["json"] = json.loads((tmp_path / "gpu_check.json").read_text())
        seen["md"] = (tmp_path / "gpu_check.md").read_text()
        return {}

    plan = [gc.Item("peek", 0, (1, 1), peek, "x"), gc.Item("later", 1, (1, 1), lambda b: {}, "x")]
    gc.run_all(stand_in_bench(gc, tmp_path, plan), plan)
    assert [i["status"] for i in seen["json"]["items"]] == ["running", "pending"]
    assert not seen["json"]["complete"] and "NOT finished (in peek)" in seen["md"]


def test_estimates_come_from_items_of_the_same_kind(gc, tmp_path):
    plan = [gc.Item("a", 0, (1, 1), lambda b: time.sleep(0.3) or {}, "slow"),
            gc.Item("b", 1, (1, 0.01), lambda b: {}, "slow"),
            gc.Item("c", 2, (1, 0.01), lambda b: {}, "compile-forward")]
    bench = stand_in_bench(gc, tmp_path, plan, budget="1000")
    gc.run_all(bench, plan[:1])
    bench.args.budget_s = bench.elapsed() + 0.2  # 0.2 s left: b is judged by a's 0.3 s, not its default
    gc.run_all(bench, plan[1:])
    assert bench.outcomes["b"]["status"] == "not run" and bench.outcomes["b"]["estimate_s"] >= 0.3
    assert bench.outcomes["c"]["status"] == "ok"  # its kind's default (0.01 s) fits


def test_a_fast_compile_does_not_shrink_the_next_estimate(gc, tmp_path):
    """A compile that hit inductor's disk cache took seconds; the next one may take minutes."""
    plan = [gc.Item("fwd", 0, (120, 90), None, "compile-forward"), gc.Item("train", 1, (300, 400), None, "compile-train")]
    bench = stand_in_bench(gc, tmp_path, plan)
    bench.outcomes["fwd"].update(status="ok", seconds=5.0)
    assert gc.estimate(plan[1], bench) == 200  # not 3 x 5 s: half the --tiny default
    bench.outcomes["fwd"]["seconds"] = 80.0
    assert gc.estimate(plan[1], bench) == 240  # three forwards' compile
    assert gc.estimate(plan[0], bench) == 80


@pytest.mark.slow
def test_tiny_default_with_inductor_fits_five_minutes(tmp_path):
    """The --tiny default as a user runs it: inductor compiles within the default budget (240 s);
    what does not fit is "not run: time budget", nothing fails. Inductor's cache starts empty, as
    on a fresh machine (a warm one turns a compile of minutes into seconds)."""
    t0 = time.monotonic()
    proc = run_script(tmp_path / "out", "--device", "cpu", "--tiny", timeout=420,
                      env={"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")})
    seconds = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert seconds < 300, seconds
    data = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    by_name = items(data)
    for name, item in by_name.items():
        assert item["status"] in ("ok", "not run"), (name, item.get("error"))
        if item["status"] == "not run":
            assert item["reason"].startswith("time budget"), (name, item["reason"])
    for name in ("environment", "eager-fp16-resnet50", "eager-fp16-bninception", "impl-resnet50",
                 "impl-bninception", "eager-bf16-resnet50", "eager-bf16-bninception",
                 "compiled-fp16-resnet50-forward-gsf"):
        assert by_name[name]["status"] == "ok", name
    compiled = by_name["compiled-fp16-resnet50-forward-gsf"]["results"]
    assert compiled["backend"] == "inductor" and all(r["compile_s"] > 0 for r in compiled["records"])
    assert data["imported_forbidden"] == []


@pytest.mark.slow  # make test-slow (.ci/run runs it): make test stays within 8 minutes on 2 cores
def test_the_training_loop_item_runs_the_harness_fit(tiny_run):
    """harness.train.fit as a trial runs it: one epoch of 4 steps of 2 clips, 8 validation clips,
    its throughput and the share of the epoch spent waiting for the loader, in the JSON and the md."""
    _, data, md, _ = tiny_run
    r = items(data)["fit-gsf-resnet50-synthetic"]["results"]
    assert r["train_steps"] == 4 and r["val_clips"] == 8 and r["train_clips_per_s"] > 0
    assert 0 <= r["data_wait_fraction"] < 1 and math.isfinite(r["train_loss"])
    assert f"{r['train_clips_per_s']:.1f} training clips/s, waiting for the loader {100 * r['data_wait_fraction']:.0f}%" in md


@pytest.mark.slow  # make test-slow (.ci/run runs it): make test stays within 8 minutes on 2 cores
def test_frame_decoding_item_times_the_cpu_side_and_says_why_not_cuda(tiny_run):
    """data.decode: cuda is timed where CUDA is; here the CPU side runs and the CUDA side says why not."""
    _, data, md, _ = tiny_run
    r = items(data)["data-decode-frames"]["results"]
    assert list(r["sizes"]) == ["176x100"]
    row = r["sizes"]["176x100"]
    assert row["cpu_clips_per_s"] > 0 and math.isfinite(row["cpu_clips_per_s"])
    assert row["cuda"] == "not run: no CUDA device" and "cuda_clips_per_s" not in row
    assert f"| 176x100 | {row['cpu_clips_per_s']:.1f} | not run: no CUDA device | – | – |" in md
