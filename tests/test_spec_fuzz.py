"""A hostile pass over the sweep's input: malformed spec files and command lines, each through the
real entry point (``harness.sweep.main`` with ``--dry-run``, in this process: the spec, the results
dir, the store and the data are all checked; no Ray). Every case states how it must end; nearly all
with the promised one line and exit 2, a few are accepted (each says why).

    python tests/test_spec_fuzz.py     # the table of how the cases end, with counts
"""
from __future__ import annotations

import copy
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

VALID = {
    "name": "fuzz",
    "paper_table": "table5_components.csv",
    "base": {
        "model": {"backbone": "resnet18", "width_mult": 0.125, "num_classes": 4, "num_frames": 4, "module": "gsf",
                  "shift_ratio": 0.5},
        "data": {"dataset": "synthetic", "num_classes": 4, "train_size": 32, "val_size": 16, "frame_size": 32},
        "train": {"epochs": 1, "batch_size": 16},
        "measure": {"input_size": 32},
    },
    "grid": {"variants": [{"name": "GSF", "paper_row": {"model": "GSF"}},
                          {"name": "TSN", "set": {"model.gating": 0, "model.fusion": "sum"}, "paper_row": {"model": "TSN"},
                           "baseline": "GSF"}],
             "axes": {"model.num_frames": [4, 8]}},
    "seeds": [0],
    "profiles": {"smoke": {}, "paper": {}},
}

DELETE = object()


def mutate(*changes) -> dict:
    """VALID with (dotted path, value) changes; DELETE removes the key."""
    spec = copy.deepcopy(VALID)
    for dotted, value in changes:
        *parents, last = dotted.split("/")
        node = spec
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {})
        if value is DELETE:
            del node[last]
        elif isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return spec


def text(s: str) -> bytes:
    return s.encode()


BOMB = "".join(f"      a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9) if i else ', '.join(['x'] * 9)}]\n" for i in range(10))

# (id, spec: dict | bytes | None for the valid one, extra command-line words, expected outcome)
ONE_LINE, ACCEPTED = "exit 2, one line", "accepted (exit 0)"
CASES = [
    # --- the file itself
    ("empty file", b"", [], ONE_LINE),
    ("only a comment", b"# nothing\n", [], ONE_LINE),
    ("a list, not a mapping", b"- base\n- grid\n", [], ONE_LINE),
    ("a scalar", b"hello\n", [], ONE_LINE),
    ("binary (ELF header)", b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)), [], ONE_LINE),
    ("UTF-16 LE with BOM", yaml.safe_dump(VALID).encode("utf-16"), [], ONE_LINE),
    ("UTF-16 BE without BOM", yaml.safe_dump(VALID).encode("utf-16-be"), [], ONE_LINE),
    ("UTF-32", yaml.safe_dump(VALID).encode("utf-32"), [], ONE_LINE),
    ("latin-1 byte", text(yaml.safe_dump(VALID)) + b"description: caf\xe9\n", [], ONE_LINE),
    ("control character", b"description: \x07\nname: x\n", [], ONE_LINE),
    ("NUL in the middle", b"name: x\x00y\n", [], ONE_LINE),
    ("tab indentation", b"base:\n\tmodel: {}\n", [], ONE_LINE),
    ("unclosed bracket", b"base: {model: {num_frames: 8}\n", [], ONE_LINE),
    ("unclosed quote", b"name: \"fuzz\n", [], ONE_LINE),
    ("bad indentation", b"base:\n  model:\n    num_frames: 8\n   module: gsf\n", [], ONE_LINE),
    ("duplicate top-level key", b"name: a\nseeds: [0]\nname: b\n", [], ONE_LINE),
    ("duplicate nested key", b"base:\n  train: {epochs: 1, epochs: 2}\n", [], ONE_LINE),
    ("deep flow nesting", ("base: " + "[" * 3000 + "]" * 3000 + "\n").encode(), [], ONE_LINE),
    ("deep block nesting", ("base:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 120))).encode(), [], ONE_LINE),
    ("alias bomb (9^10)", ("base:\n  model:\n    module_options:\n" + BOMB).encode(), [], ONE_LINE),
    ("recursive alias", b"base: &b {model: {module_options: {x: *b}}}\n", [], ONE_LINE),
    ("undefined alias", b"base: *nowhere\n", [], ONE_LINE),
    ("over 1 MB", b"description: " + b"x" * 1_100_000 + b"\n", [], ONE_LINE),
    ("python tag (unsafe YAML)", b"base: !!python/object/apply:os.system ['true']\n", [], ONE_LINE),
    # --- top-level structure
    ("unknown top-level key", mutate(("grdi", {})), [], ONE_LINE),
    ("name is a number", mutate(("name", 5)), [], ONE_LINE),
    ("name ../x", mutate(("name", "../x")), [], ONE_LINE),
    ("name /abs", mutate(("name", "/tmp/abs")), [], ONE_LINE),
    ("name with a space", mutate(("name", "my spec")), [], ONE_LINE),
    ("name empty", mutate(("name", "")), [], ONE_LINE),
    ("description is a list", mutate(("description", ["a"])), [], ONE_LINE),
    ("paper_table missing", mutate(("paper_table", "nope.csv")), [], ONE_LINE),
    ("paper_table ../ escape", mutate(("paper_table", "../../pyproject.toml")), [], ONE_LINE),
    ("base is a list", mutate(("base", [1])), [], ONE_LINE),
    ("base unknown section", mutate(("base/trian", {})), [], ONE_LINE),
    ("grid is a list", mutate(("grid", [])), [], ONE_LINE),
    ("variants is a mapping", mutate(("grid/variants", {"a": 1})), [], ONE_LINE),
    ("variant without name", mutate(("grid/variants/0/name", DELETE)), [], ONE_LINE),
    ("variant unknown key", mutate(("grid/variants/0/sett", {})), [], ONE_LINE),
    ("variant set is a list", mutate(("grid/variants/0/set", ["model.gating"])), [], ONE_LINE),
    ("variant set key not SECTION.KEY", mutate(("grid/variants/0/set", {"gating": 0})), [], ONE_LINE),
    ("variant set unknown section", mutate(("grid/variants/0/set", {"modle.gating": 0})), [], ONE_LINE),
    ("variant set unknown field", mutate(("grid/variants/0/set", {"model.gatng": 0})), [], ONE_LINE),
    ("duplicate variant names", mutate(("grid/variants/1/name", "GSF")), [], ONE_LINE),
    ("baseline not a variant", mutate(("grid/variants/1/baseline", "TSM")), [], ONE_LINE),
    ("paper_row unknown column", mutate(("grid/variants/0/paper_row", {"modle": "GSF"})), [], ONE_LINE),
    ("paper_row without paper_table", mutate(("paper_table", DELETE)), [], ONE_LINE),
    ("axis with no values", mutate(("grid/axes/model.num_frames", [])), [], ONE_LINE),
    ("axis values not a list", mutate(("grid/axes/model.num_frames", 8)), [], ONE_LINE),
    ("axis key not SECTION.KEY", mutate(("grid/axes", {"num_frames": [4]})), [], ONE_LINE),
    ("axis value repeated", mutate(("grid/axes/model.num_frames", [4, 8, 4])), [], ONE_LINE),
    ("two points, one config", mutate(("grid/variants/1/set", {"model.gating": "learned"})), [], ONE_LINE),
    ("seeds empty", mutate(("seeds", [])), [], ONE_LINE),
    ("seeds as strings", mutate(("seeds", ["0"])), [], ONE_LINE),
    ("seed negative", mutate(("seeds", [-1])), [], ONE_LINE),
    ("seed float", mutate(("seeds", [1.5])), [], ONE_LINE),
    ("seed bool", mutate(("seeds", [True])), [], ONE_LINE),
    ("seeds repeated", mutate(("seeds", [0, 1, 0])), [], ONE_LINE),
    ("seeds a scalar", mutate(("seeds", 0)), [], ONE_LINE),
    ("profiles a list", mutate(("profiles", ["smoke"])), [], ONE_LINE),
    ("profile body a list", mutate(("profiles/smoke", [1])), [], ONE_LINE),
    ("profile sets a bad value", mutate(("profiles/smoke", {"model": {"num_frames": 0}})), [], ONE_LINE),
    # --- values
    ("num_frames a string", mutate(("base/model/num_frames", "8")), [], ONE_LINE),
    ("num_frames true", mutate(("base/model/num_frames", True)), [], ONE_LINE),
    ("num_frames 8.5", mutate(("base/model/num_frames", 8.5)), [], ONE_LINE),
    ("num_frames 0", mutate(("base/model/num_frames", 0)), [], ONE_LINE),
    ("num_frames 1e9", mutate(("base/model/num_frames", 10**9)), [], ONE_LINE),
    ("num_frames null", mutate(("base/model/num_frames", None)), [], ONE_LINE),
    ("backbone unknown", mutate(("base/model/backbone", "vgg16")), [], ONE_LINE),
    ("backbone a number", mutate(("base/model/backbone", 50)), [], ONE_LINE),
    ("module unknown", mutate(("base/model/module", "lstm")), [], ONE_LINE),
    ("shift_ratio 0", mutate(("base/model/shift_ratio", 0)), [], ONE_LINE),
    ("shift_ratio 1.5", mutate(("base/model/shift_ratio", 1.5)), [], ONE_LINE),
    ("shift_ratio a word", mutate(("base/model/shift_ratio", "half")), [], ONE_LINE),
    ("gating a word", mutate(("base/model/gating", "fixed")), [], ONE_LINE),
    ("gating 3", mutate(("base/model/gating", 3)), [], ONE_LINE),
    ("gating true", mutate(("base/model/gating", True)), [], ONE_LINE),
    ("fusion unknown", mutate(("base/model/fusion", "concat")), [], ONE_LINE),
    ("placement not of the backbone", mutate(("base/model/placement", "branch4")), [], ONE_LINE),
    ("width_mult 1e-9", mutate(("base/model/width_mult", 1e-9)), [], ONE_LINE),
    ("width_mult 100", mutate(("base/model/width_mult", 100)), [], ONE_LINE),
    ("dropout 1", mutate(("base/model/dropout", 1)), [], ONE_LINE),
    ("num_classes 0", mutate(("base/model/num_classes", 0)), [], ONE_LINE),
    ("channel_shuffle (retired)", mutate(("base/model/channel_shuffle", True)), [], ONE_LINE),
    ("layout a word", mutate(("base/model/layout", "authors")), [], ONE_LINE),
    ("release_checkpoint a number", mutate(("base/model/release_checkpoint", 5)), [], ONE_LINE),
    ("release_checkpoint not on disk", mutate(("base/model/release_checkpoint", "/no/such/gsf.pth.tar")), [], ONE_LINE),
    ("epochs true", mutate(("base/train/epochs", True)), [], ONE_LINE),
    ("epochs -1", mutate(("base/train/epochs", -1)), [], ONE_LINE),
    ("epochs 1e9", mutate(("base/train/epochs", 10**9)), [], ONE_LINE),
    ("batch_size 0", mutate(("base/train/batch_size", 0)), [], ONE_LINE),
    ("lr 0", mutate(("base/train/lr", 0)), [], ONE_LINE),
    ("lr a word", mutate(("base/train/lr", "fast")), [], ONE_LINE),
    ("lr 1000", mutate(("base/train/lr", 1000)), [], ONE_LINE),
    ("optimizer unknown", mutate(("base/train/optimizer", "adam")), [], ONE_LINE),
    ("warmup_epochs negative", mutate(("base/train/warmup_epochs", -1)), [], ONE_LINE),
    ("eval_every 0", mutate(("base/train/eval_every", 0)), [], ONE_LINE),
    ("latency_runs 1e9", mutate(("base/measure/latency_runs", 10**9)), [], ONE_LINE),
    ("latency_runs 5", mutate(("base/measure/latency_runs", 5)), [], ONE_LINE),
    ("measure input_size 8", mutate(("base/measure/input_size", 8)), [], ONE_LINE),
    ("measure input_size 1e9", mutate(("base/measure/input_size", 10**9)), [], ONE_LINE),
    ("latency_clips 0", mutate(("base/measure/latency_clips", 0)), [], ONE_LINE),
    ("flops a word", mutate(("base/measure/flops", "no")), [], ONE_LINE),
    ("dataset unknown", mutate(("base/data/dataset", "imagenet")), [], ONE_LINE),
    ("train_size 1e12", mutate(("base/data/train_size", 10**12)), [], ONE_LINE),
    ("train_size a string", mutate(("base/data/train_size", "64")), [], ONE_LINE),
    ("synthetic classes odd", mutate(("base/data/num_classes", 3), ("base/model/num_classes", 3)), [], ONE_LINE),
    ("synthetic classes 100", mutate(("base/data/num_classes", 100)), [], ONE_LINE),
    ("frame_size 8", mutate(("base/data/frame_size", 8)), [], ONE_LINE),
    ("workers negative", mutate(("base/data/workers", -1)), [], ONE_LINE),
    ("test_crops 2", mutate(("base/data/test_crops", 2)), [], ONE_LINE),
    ("protocol unknown", mutate(("base/data/protocol", "fast")), [], ONE_LINE),
    ("data unknown key", mutate(("base/data/frame_sise", 32)), [], ONE_LINE),
    ("flip_label_map on synthetic", mutate(("base/data/flip_label_map", {0: 1})), [], ONE_LINE),
    ("real dataset without lists", mutate(("base/data", {"dataset": "diving48", "root": "/tmp"})), [], ONE_LINE),
    ("real dataset not on disk", mutate(("base/data", {"dataset": "something-v1", "root": "/no/such",
                                                       "train_list": "t.txt", "val_list": "v.txt",
                                                       "categories": "c.txt"})), [], ONE_LINE),
    ("model and data classes differ", mutate(("base/model/num_classes", 174)), [], ONE_LINE),
    # --- accepted on purpose
    ("the valid spec", None, [], ACCEPTED),
    ("UTF-8 with a BOM", b"\xef\xbb\xbf" + text(yaml.safe_dump(VALID)), [], ACCEPTED),  # editors write it
    ("lr: 1e-4 without a dot", text(yaml.safe_dump(VALID)).replace(b"batch_size: 16", b"batch_size: 16\n    lr: 1e-4"),
     [], ACCEPTED),  # a float in YAML 1.2, a string in PyYAML's 1.1
    ("root on a synthetic dataset", mutate(("base/data/root", "/no/such")), [], ACCEPTED),  # a profile may switch
    ("epochs 0", mutate(("base/train/epochs", 0)), [], ACCEPTED),  # evaluation only
    # --- the command line
    ("--profile not defined", None, ["--profile", "gpu"], ONE_LINE),
    ("--cpus-per-trial nan", None, ["--cpus-per-trial", "nan"], ONE_LINE),
    ("--cpus-per-trial inf", None, ["--cpus-per-trial", "inf"], ONE_LINE),
    ("--cpus-per-trial 0", None, ["--cpus-per-trial", "0"], ONE_LINE),
    ("--cpus-per-trial abc", None, ["--cpus-per-trial", "abc"], ONE_LINE),
    ("--gpus-per-trial -1", None, ["--gpus-per-trial=-1"], ONE_LINE),
    ("--gpus-per-trial nan", None, ["--gpus-per-trial", "nan"], ONE_LINE),
    ("unknown flag", None, ["--fast"], ONE_LINE),
    ("spec file missing", "missing", [], ONE_LINE),
    ("spec is a folder", "folder", [], ONE_LINE),
    ("--results-dir is a file", None, ["--results-dir", "{file}"], ONE_LINE),
    ("--results-dir under a file", None, ["--results-dir", "{file}/sub"], ONE_LINE),
    ("--results-dir read-only", None, ["--results-dir", "/sys"], ONE_LINE),
    ("--results-dir with ?", None, ["--results-dir", "{tmp}/a?b"], ONE_LINE),
    ("--results-dir with %", None, ["--results-dir", "{tmp}/100%"], ONE_LINE),
    ("tracking URI refused", None, ["env:MLFLOW_TRACKING_URI=foo://bar"], ONE_LINE),
    ("tracking URI not answering", None, ["env:MLFLOW_TRACKING_URI=http://127.0.0.1:9"], ONE_LINE),
]


def run_case(case, tmp: Path, capsys=None) -> tuple[str, str]:
    """(how the case ended, the stderr it printed)."""
    import contextlib
    import io
    import os

    from harness import sweep

    name, content, extra, _ = case
    folder = tmp / f"case{CASES.index(case)}"
    folder.mkdir()
    spec = folder / "spec.yaml"
    if content is None:
        spec.write_text(yaml.safe_dump(VALID))
    elif content == "missing":
        spec = folder / "absent.yaml"
    elif content == "folder":
        spec = folder
    elif isinstance(content, bytes):
        spec.write_bytes(content)
    else:
        spec.write_text(yaml.safe_dump(content, sort_keys=False))
    (folder / "file").write_text("x")
    env = dict(w.removeprefix("env:").split("=", 1) for w in extra if w.startswith("env:"))
    words = [w.format(file=folder / "file", tmp=folder) for w in extra if not w.startswith("env:")]
    if "--results-dir" not in " ".join(words):
        words += ["--results-dir", str(tmp / "results")]  # one store shared by every case
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", *env)}
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.update(env)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                rc = sweep.main([str(spec), *words, "--dry-run"])
            except SystemExit as e:
                rc = e.code
            except BaseException as e:  # noqa: BLE001 (a traceback is what the fuzz looks for)
                return f"uncaught {type(e).__name__}", f"{e}"
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    if rc == 2 and len(lines) == 1 and lines[0].startswith("harness.sweep: error: "):
        return ONE_LINE, lines[0]
    if rc == 0:
        return ACCEPTED, "\n".join(lines)
    return f"exit {rc}, {len(lines)} lines", "\n".join(lines)


@pytest.fixture(scope="module")
def shared_tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_fuzz_case_ends_as_promised(case, shared_tmp):
    outcome, stderr = run_case(case, shared_tmp)
    assert outcome == case[3], f"{case[0]}: {outcome}: {stderr[-1500:]}"
    if outcome == ONE_LINE:
        assert "Traceback" not in stderr and len(stderr) < 1000, stderr


def test_fuzz_is_large_enough():
    assert len(CASES) >= 80 and sum(c[3] == ONE_LINE for c in CASES) >= 80


if __name__ == "__main__":
    import collections
    import os

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    with tempfile.TemporaryDirectory() as tmp:
        results = [(case, *run_case(case, Path(tmp))) for case in CASES]
    counts = collections.Counter(outcome for _, outcome, _ in results)
    width = max(len(c[0]) for c in CASES)
    for case, outcome, stderr in results:
        mark = "" if outcome == case[3] else "   <-- expected " + case[3]
        print(f"{case[0]:<{width}}  {outcome}{mark}  {stderr.splitlines()[0][:150] if stderr else ''}")
    print(f"\n{len(CASES)} cases: " + ", ".join(f"{n} {o}" for o, n in counts.most_common()))
    sys.exit(0 if all(outcome == case[3] for case, outcome, _ in results) else 1)
