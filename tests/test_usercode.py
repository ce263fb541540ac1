"""A researcher's own module, from a folder outside the project, through real Ray workers.

The "Your own module" example of docs/own_modules.md (its two files, read from that doc so that
the doc cannot drift from what is tested) runs as a user would run it: ``python -m harness.sweep
my_spec.yaml`` in its own folder. Its table row has params, FLOPs and latency beside TSM's, its
trials imported the copy Ray shipped in the job's runtime_env, and after an edit of the module
only the row built from it runs again. Bad specs are exit 2 with one line.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from cluster import ENV as CLUSTER_ENV
from cluster import Processes, can_unshare, free_port, in_namespace, mlflow_server, ray_node, wait_for_http

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "1"}
for key in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "PYTHONPATH"):
    ENV.pop(key, None)


def readme_example() -> dict[str, str]:
    """file name -> text of the code blocks of docs/own_modules.md's "Your own module" section that start
    with a ``# <file name>`` line."""
    section = ROOT.joinpath("docs", "own_modules.md").read_text().split("## Your own module", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(?:python|yaml)\n# (\S+)\n(.*?)```", section, flags=re.S)
    return {name: text for name, text in blocks}


def _write_example(folder: Path, **replace: tuple[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in readme_example().items():
        old, new = replace.get(name.replace(".", "_"), ("", ""))
        assert old in text, (name, old)
        (folder / name).write_text(text.replace(old, new, 1))
    return folder / "my_spec.yaml"


def _sweep(spec: Path, *extra: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """The sweep as a user runs it: in the spec's folder, outside the project."""
    return subprocess.run([sys.executable, "-m", "harness.sweep", spec.name, *extra], cwd=spec.parent,
                          capture_output=True, text=True, env=ENV, timeout=timeout)


def test_readme_example_is_complete():
    example = readme_example()
    assert set(example) == {"my_module.py", "my_spec.yaml"}
    assert "imports: [my_module]" in example["my_spec.yaml"]
    assert len(example["my_module.py"].splitlines()) + len(example["my_spec.yaml"].splitlines()) <= 35


@pytest.mark.slow  # make test-slow (.ci/run runs it): make test stays within 8 minutes on 2 cores
@pytest.mark.timeout(900)
def test_own_module_from_outside_the_project_through_ray_workers_and_rerun_after_an_edit(tmp_path):
    spec = _write_example(tmp_path / "my_research")
    assert not spec.resolve().is_relative_to(ROOT)
    first = _sweep(spec)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "3 trials, 0 already finished, 3 to run" in first.stdout

    results = spec.parent / "results"
    table = pd.read_csv(results / "my_spec" / "table.csv").set_index("variant")
    assert list(table.index) == ["mine", "TSM", "TSN"]
    for col in ("top1", "params_M", "GFLOPs", "latency_ms"):
        assert table[col].notna().all(), col
    # tconv's temporal convs have weights, TSM's shift has none: TSM is TSN's size.
    assert table.loc["mine", "params_M"] > table.loc["TSM", "params_M"] == table.loc["TSN", "params_M"]
    assert table.loc["mine", "GFLOPs"] > table.loc["TSN", "GFLOPs"]
    assert table[["latency_x"]].loc[["mine", "TSM"]].notna().all().all()

    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    exp = client.get_experiment_by_name("my_spec")
    runs = {r.data.tags["variant"]: r for r in client.search_runs([exp.experiment_id], "tags.kind = 'trial'")}
    assert runs["mine"].data.params["model.module"] == "tconv"
    # The trial found my_module in the copy Ray shipped (runtime_env py_modules), not the user's folder.
    shipped = json.loads(runs["mine"].data.tags["user_code"])
    assert len(shipped) == 1 and "runtime_resources" in shipped[0] and shipped[0].endswith("my_module.py"), shipped
    assert "my_module.py" in json.loads(runs["mine"].data.tags["model_code_sources"])
    assert json.loads(runs["TSM"].data.tags["user_code"]) == []
    assert "my_module.py" not in json.loads(runs["TSM"].data.tags["model_code_sources"])

    # Edit the module: the row built from it runs again and the first line says why; TSM and TSN
    # (gsf's code alone, unchanged) are skipped.
    module = spec.parent / "my_module.py"
    module.write_text(module.read_text().replace("bias=False", "bias=True"))
    again = _sweep(spec)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    lines = again.stdout.splitlines()
    assert lines[0] == "1 trial re-run: model code changed since their runs (my_module.py)", lines[:3]
    assert "3 trials, 2 already finished, 1 to run" in lines[1]
    rerun = pd.read_csv(results / "my_spec" / "table.csv").set_index("variant")
    assert rerun.loc["TSM", "top1"] == table.loc["TSM", "top1"]
    mine = client.search_runs([exp.experiment_id], "tags.kind = 'trial' and tags.variant = 'mine'",
                              order_by=["attributes.start_time DESC"])
    assert len(mine) == 2 and len({r.data.tags["model_code_digest"] for r in mine}) == 2
    newest = json.loads(mine[0].data.tags["model_code_sources"])["my_module.py"]
    assert newest == hashlib.sha256(module.read_bytes()).hexdigest()[:16], "the new run ran the edited file"
    assert len(client.search_runs([exp.experiment_id], "tags.kind = 'trial'")) == 4


@pytest.mark.parametrize("replace,needle", [
    ({"my_spec_yaml": ("{kernel: 3}", "{kernal: 3}")},
     "my_spec.yaml: grid.variants[0] (mine).model.module_options: 'kernal' is not an option of module 'tconv' "
     "(did you mean 'kernel'?); allowed: kernel"),
    ({"my_spec_yaml": ("imports: [my_module]", "imports: [my_modul]")},
     "my_spec.yaml: imports[0]: cannot import 'my_modul': ModuleNotFoundError: No module named 'my_modul' "
     "(looked in "),
    # an error inside the user's module: its last line, naming the file and line
    ({"my_module_py": ("import gsf\n", "import gsf\nfrom torch import nn as\n")},
     "my_spec.yaml: imports[0]: cannot import 'my_module': SyntaxError: invalid syntax (my_module.py, line 5)"),
    ({"my_spec_yaml": ("backbone: resnet18", "backbone: timm/resnet50dd")},
     "my_spec.yaml: base.model.backbone: unknown timm model 'resnet50dd'; close matches: resnet50d, "),
], ids=["module-option", "missing-import", "broken-import", "timm-name"])
def test_bad_user_specs_exit_2_with_one_line(tmp_path, replace, needle):
    spec = _write_example(tmp_path / "my_research", **replace)
    proc = _sweep(spec, "--dry-run", timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert needle in lines[0], lines[0]


def test_a_trial_refuses_code_other_than_the_drivers(tmp_path):
    """A node with another copy of the module (or a file edited after the sweep started) fails
    the trial: its results would be recorded under the identity of code it did not run."""
    from harness.trial import check_code

    (tmp_path / "other_module.py").write_text("X = 1\n")
    job = {"imports": ["other_module"], "import_folder": str(tmp_path), "user_modules": ["other_module"]}
    code = check_code(job)
    assert code["other_module.py"] == hashlib.sha256(b"X = 1\n").hexdigest()
    assert "gsf/modules/gsf.py" in code and not any("__pycache__" in k for k in code)
    with pytest.raises(RuntimeError, match="not the code the sweep started with"):
        check_code({**job, "model_code_digest": "0" * 12})


def test_a_trials_identity_holds_its_baselines_model(tmp_path):
    """GSF's row times its baseline beside itself (latency_x): another baseline model is another
    result, so GSF re-runs when only TSN's row changed."""
    from harness.spec import load_spec

    def gsf_hash(tsn_dropout: float) -> str:
        spec = {"base": {"model": {"backbone": "resnet18", "width_mult": 0.125, "num_classes": 4, "num_frames": 4}},
                "grid": {"variants": [{"name": "GSF", "baseline": "TSN"},
                                      {"name": "TSN", "set": {"model.module": "none", "model.dropout": tsn_dropout}}]}}
        path = tmp_path / "s.yaml"
        path.write_text(yaml.safe_dump(spec))
        trials = {t.variant: t for t in load_spec(path).trials}
        assert trials["GSF"].baseline_model == trials["TSN"].config["model"]
        return trials["GSF"].hash, trials["GSF"].config

    (a, config_a), (b, config_b) = gsf_hash(0.5), gsf_hash(0.2)
    assert config_a == config_b and a != b


@pytest.mark.slow  # make test-slow (.ci/run runs it): make test stays within 8 minutes on 2 cores
@pytest.mark.timeout(600)
@pytest.mark.skipif(not can_unshare(), reason="needs private mount namespaces (unshare -m)")
def test_own_module_reaches_a_node_that_does_not_see_the_users_folder(tmp_path):
    """A Ray node (``ray start``, as on another machine) whose view of the user's folder is an
    empty folder: its trial imports my_module from the copy the job's runtime_env shipped."""
    spec = _write_example(tmp_path / "my_research")
    empty = tmp_path / "empty"
    empty.mkdir()
    procs = Processes()
    port, ray_port = free_port(), free_port()
    try:
        server = mlflow_server(procs, "127.0.0.1", port, tmp_path / "server", f"127.0.0.1:{port},localhost:*")
        ray_node(procs, tmp_path / "head.log", ray_port, head=True, cpus=1,
                 wrap=lambda c: in_namespace(c, mounts=((empty, spec.parent),)))
        wait_for_http(f"http://127.0.0.1:{port}/health", server)
        proc = subprocess.run([sys.executable, "-m", "harness.sweep", spec.name, "--measure-only", "--address",
                               f"127.0.0.1:{ray_port}"], cwd=spec.parent, capture_output=True, text=True, timeout=500,
                              env={**CLUSTER_ENV, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"})
    finally:
        procs.stop_all()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'server' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("my_spec")
    (mine,) = client.search_runs([exp.experiment_id], "tags.kind = 'trial' and tags.variant = 'mine'")
    shipped = json.loads(mine.data.tags["user_code"])
    assert len(shipped) == 1 and "runtime_resources" in shipped[0], shipped
    assert mine.data.metrics["params_M"] > 0


def test_code_of_more_files_than_a_tag_holds_keeps_its_digest_and_lists_nothing():
    """A user's package of a few hundred files is more than one MLflow tag holds (8,000
    characters): the trial must still log (the listing is left out), not fail on the tag."""
    from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

    from harness.trial import code_tags

    small = {"gsf/model.py": "a" * 64, "my_module.py": "b" * 64}
    assert json.loads(code_tags({}, small)["model_code_sources"]) == {"gsf/model.py": "a" * 16, "my_module.py": "b" * 16}
    large = {f"my_package/part_{i:04d}.py": "c" * 64 for i in range(400)}
    tags = code_tags({}, large)
    assert len(json.dumps({k: v[:16] for k, v in large.items()})) > MAX_TAG_VAL_LENGTH
    assert tags["model_code_sources"] == "{}"
    assert all(len(v) <= MAX_TAG_VAL_LENGTH for v in tags.values())
