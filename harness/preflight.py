"""Checks before any trial starts: the spec's size and name, the results dir and its lock, the data,
the weights, the batches, the release checkpoints, code changed since finished runs, and, once Ray
is up, the resources each trial asks for and what every node of a cluster sees."""
from __future__ import annotations

import fcntl
import json
import math
import os
import socket
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

from gsf.model import NO_WEIGHTS
from harness.spec import Spec, SpecError, load_spec


def load(args) -> Spec:
    """The spec of the command line. A grid of more than ``--max-trials`` trials is refused before
    it is expanded (one line with the count). A spec with no ``name:`` whose file name cannot name
    a folder (spaces, non-ASCII letters) is loaded under a name derived from it, said once here."""
    from harness.spec import NAME, read_yaml

    path = Path(args.spec)
    raw = read_yaml(path) if path.is_file() else None
    count = grid_size(raw)
    if count is not None and count > args.max_trials:
        raise SpecError(f"{path}: the grid expands to {count:,} trials ({grid_factors(raw)}), more than the "
                        f"limit of {args.max_trials:,}; to run them all, add --max-trials {count}")
    if not isinstance(raw, dict) or raw.get("name") is not None or NAME.fullmatch(path.stem):
        return load_spec(path, args.profile)
    name = safe_name(path.stem)
    spec = load_spec(path, args.profile, default_name=name)
    print(f"{path}: the file name {path.stem!r} cannot name a results folder; this sweep is named {name!r} "
          f"(set name: in the spec to choose another)", flush=True)
    return spec


def grid_size(raw: Any) -> int | None:
    """Trials a spec's grid expands to (variants x axis values x seeds), counted from its YAML
    without expanding it; None when the grid is malformed (``load_spec`` says how)."""
    shape = _grid_shape(raw)
    return None if shape is None else shape[0] * math.prod(shape[1].values()) * shape[2]


def grid_factors(raw: Any) -> str:
    variants, axes, seeds = _grid_shape(raw)
    return " x ".join([f"{variants} variants", *(f"{n} {key}" for key, n in axes.items()), f"{seeds} seeds"])


def _grid_shape(raw: Any) -> tuple[int, dict[str, int], int] | None:
    if not isinstance(raw, dict):
        return None
    grid, seeds = raw.get("grid") or {}, raw.get("seeds", [0])
    if not isinstance(grid, dict) or not isinstance(seeds, list):
        return None
    variants, axes = grid.get("variants") or [None], grid.get("axes") or {}
    if not isinstance(variants, list) or not isinstance(axes, dict):
        return None
    if not all(isinstance(values, list) for values in axes.values()):
        return None
    return len(variants), {str(k): len(v) for k, v in axes.items()}, len(seeds)


def safe_name(stem: str) -> str:
    """A folder name (``harness.spec.NAME``) for a spec file named ``stem``: accents dropped, each
    run of other characters one '_'; a name with nothing left is named by a digest."""
    import hashlib
    import re
    import unicodedata

    from harness.spec import NAME

    bare = "".join(c for c in unicodedata.normalize("NFKD", stem) if not unicodedata.combining(c))
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", bare).strip("._-")[:100].rstrip("._-")
    return name if NAME.fullmatch(name) else f"spec-{hashlib.sha256(stem.encode()).hexdigest()[:8]}"


def pick_runs(finished: dict[str, list[Any]], h: str, measure_only: bool):
    """The newest finished run of a trial that answers the request (a trained run also has sizes)."""
    for run in finished.get(h, []):
        if measure_only or run.data.tags.get("measure_only") == "False":
            return run
    return None


def check_results_dir(arg: str) -> Path:
    """The results dir, absolute, created and writable; else a one-line ``SpecError``."""
    path = Path(arg).expanduser().resolve()
    bad = [c for c in "?%" if c in str(path)]
    if bad:
        # sqlite:///path cuts the path at '?' and URL-decodes '%': MLflow's store would go elsewhere.
        raise SpecError(f"--results-dir {path}: holds {' and '.join(map(repr, bad))}, which the MLflow store's "
                        "sqlite URI cannot carry; choose a folder without '?' and '%'")
    if path.exists() and not path.is_dir():
        raise SpecError(f"--results-dir {path}: exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError as e:
        raise SpecError(f"--results-dir {path}: cannot {'write in' if path.is_dir() else 'create'} it: "
                        f"{e.strerror or e}") from None
    return path


def take_lock(path: Path):
    """Hold an exclusive lock on ``path`` for the rest of this process (the open file is returned:
    keep it). Another driver holding it is a one-line ``SpecError`` naming that driver."""
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise SpecError(f"{path}: another sweep of this spec on this results dir is running ({holder}); "
                        "wait for it to end, or stop it") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    f.flush()
    return f


def check_data(spec: Spec, trials) -> list[str]:
    """The data of every distinct (data section, num_classes) among ``trials``, once, here in the
    driver: a bad list or folder is one line before anything starts, not one failure per trial.
    Returns the problems, one line each (a file not prepared yet names the command that makes it)."""
    problems = []
    for label, section, num_classes in _distinct_data(trials):
        problem = data_problem(section, num_classes)
        if problem:
            problems.append(f"{spec.path}: data of {label!r}: {problem}")
    return problems


def _distinct_data(trials) -> list[tuple[str, dict, int]]:
    seen, out = set(), []
    for trial in trials:
        data, num_classes = trial.config["data"], trial.config["model"]["num_classes"]
        key = json.dumps([data, num_classes], sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append((trial.label, data, num_classes))
    return out


def data_problem(section: dict, num_classes: int) -> str | None:
    """What is wrong with a trial's data, in one line, or None."""
    from harness.data import DataConfig, DataError, check_data as check
    from harness.prepare import data_command

    cfg = DataConfig.model_validate(section)
    if not cfg.synthetic:
        for name in (cfg.categories, cfg.train_list, cfg.val_list):
            if not cfg.resolve(name).is_file():
                return (f"{cfg.resolve(name)}: not found; prepare it from the official download with: "
                        f"{data_command(cfg.dataset, Path(cfg.root), 'frames' if cfg.frames else 'videos')}")
    try:
        check(cfg, num_classes)
    except DataError as e:
        return str(e)
    return None


def check_weights(spec: Spec, trials) -> list[str]:
    """Each ``model.pretrained`` file once per backbone setting, here in the driver: present (else
    the command that prepares it), loadable into the trial's backbone with every key matched, and
    fed the input normalisation its preparation recorded. One line per problem."""
    problems, seen = [], {}
    for trial in trials:
        model, data = trial.config["model"], trial.config["data"]
        path = model.get("pretrained")
        if path in (None, NO_WEIGHTS):
            continue
        key = json.dumps({k: model.get(k) for k in ("pretrained", "backbone", "layout", "width_mult")}, sort_keys=True)
        if key not in seen:
            seen[key] = weights_problem(model)
        problem = seen[key] or _normalisation_problem(path, data.get("normalize", "imagenet"))
        if problem:
            problems.append(f"{spec.path}: model.pretrained of {trial.label!r}: {problem}")
    return list(dict.fromkeys(problems))


def weights_problem(model: dict) -> str | None:
    """What is wrong with a trial's ``model.pretrained`` file, or None: the plain backbone is built
    with it as the trial builds it (the loader matches every key or says which do not)."""
    from gsf.model import ModelConfig
    from gsf.registry import get_backbone
    from harness.prepare import weights_command

    path = model["pretrained"]
    if not os.path.isfile(path):
        command = weights_command(Path(path))
        return (f"{path}: not found; " + (f"make it with: {command}" if command else "give a local ImageNet weights "
                "file") + " (or model.pretrained: none to train from random weights, on purpose)")
    cfg = ModelConfig.model_validate(model)
    try:
        get_backbone(cfg.backbone).build(None, **cfg.backbone_kwargs())
    except (OSError, ValueError, RuntimeError) as e:
        message = str(e).strip().splitlines()[0]
        return message if path in message else f"{path}: {message}"
    return None


def _normalisation_problem(path: str, normalize: str) -> str | None:
    from harness.prepare.weights import read_sidecar

    expected = (read_sidecar(path) or {}).get("normalize")
    if expected and expected != normalize:
        return (f"{path} expects data.normalize: {expected} (its preparation says so, {Path(path).with_suffix('.json')}), "
                f"but the trial sets {normalize}")
    return None


def check_batches(spec: Spec, trials, workers: int) -> None:
    """Each trial's ``train.batch_size`` (the global batch) must divide among its workers."""
    bad = sorted({t.config["train"]["batch_size"] for t in trials if t.config["train"]["batch_size"] % workers})
    if bad:
        raise SpecError(f"{spec.path}: train.batch_size {', '.join(map(str, bad))} does not divide among {workers} "
                        "data-parallel workers (--workers-per-trial, by default the trial's GPUs): the spec's batch is "
                        "the global one, each worker takes an equal share")


def check_release_checkpoints(spec: Spec, trials) -> None:
    """Each ``model.release_checkpoint`` read once, here in the driver, and held against every
    trial's model section: a missing, unreadable or mismatched file is one line before anything starts."""
    from gsf.release import check_request, load_release_checkpoint

    found = {}
    for trial in trials:
        model = trial.config["model"]
        path = model.get("release_checkpoint")
        if path is None:
            continue
        try:
            if path not in found:
                found[path] = load_release_checkpoint(path)[0]
            check_request(found[path], path, **model)
        except (OSError, ValueError) as e:
            raise SpecError(f"{spec.path}: model.release_checkpoint of {trial.label!r}: {e}") from None


def code_changed(spec: Spec, todo, by_config: dict[str, list[Any]], measure_only: bool) -> str:
    """The line saying which trials re-run because the model's code changed since their finished
    runs (same config, another code digest), and which files changed; "" when none."""
    from harness.usercode import changed_files, listing

    again = [(t, run) for t in todo if (run := pick_runs(by_config, t.config_key, measure_only)) is not None]
    if not again:
        return ""
    files = set()
    for t, run in again:
        try:
            listed = json.loads(run.data.tags.get("model_code_sources", "{}"))
        except json.JSONDecodeError:
            listed = {}
        if listed:  # {}: too many files for the tag (or no tag); the digest alone said "changed"
            files.update(changed_files(listed, listing(spec.trial_sources(t))))
    shown = sorted(files)[:6] + (["..."] if len(files) > 6 else [])
    return (f"{len(again)} trial{'s' if len(again) != 1 else ''} re-run: model code changed since their runs"
            + (f" ({', '.join(shown)})" if shown else ""))


def defaults_filled(todo, by_config: dict[str, list[Any]], measure_only: bool, shown: int = 8) -> str:
    """The line naming the finished runs that trials no longer match because their config now holds
    the backbone's default shift_ratio / placement where it used to hold None (2026-12-07, the
    README's changes): they re-run, and say which run each one replaces; "" when none."""
    again = [(t, run) for t in todo if t.key_before_defaults != t.config_key
             and pick_runs(by_config, t.config_key, measure_only) is None
             and (run := pick_runs(by_config, t.key_before_defaults, measure_only)) is not None]
    if not again:
        return ""
    named = ", ".join(f"{t.label} (run {run.info.run_id[:8]})" for t, run in again[:shown])
    more = f" and {len(again) - shown} more" if len(again) > shown else ""
    return (f"{len(again)} trial{'s' if len(again) != 1 else ''} re-run: their configs now record the backbone's "
            f"default shift_ratio/placement, which their finished runs left unset (README: changes, 2026-12-07), "
            f"so these runs no longer match: {named}{more}")


def choose_resources(args, spec: Spec, todo, nodes: list[dict[str, float]]) -> None:
    """Set ``args.cpus_per_trial``, ``gpus_per_trial`` and ``workers_per_trial`` for ``nodes``
    and print the banner; a ``SpecError`` when trials cannot run as asked."""
    from harness import resources

    training = not args.measure_only
    want_gpu = any(t.config["train"]["device"] != "cpu" for t in todo)
    chosen = resources.plan(nodes, args.cpus_per_trial, args.gpus_per_trial,
                            args.workers_per_trial if training else 1, want_gpu)
    cuda = resources.needs_cuda(todo)
    if cuda and not chosen.gpus:
        seconds, how = resources.cpu_estimate(cuda[0].config, args.measure_only)
        where = "the Ray cluster has no GPU" if not any(n.get("GPU", 0) for n in nodes) else "--gpus-per-trial 0"
        raise SpecError(f"{spec.path} [profile {spec.profile or '-'}]: its trials need a GPU (train.device: cuda) and "
                        f"{where}; on this CPU one trial would take {resources.hours(seconds)} ({how}), "
                        f"{len(todo)} trial(s) to run: use a GPU machine or cluster, or --device cpu to run on the CPU")
    if training:
        check_batches(spec, todo, chosen.workers)
    args.cpus_per_trial, args.gpus_per_trial, args.workers_per_trial = chosen.cpus, chosen.gpus, chosen.workers
    args.trials_at_once = chosen.at_once
    print(chosen.line, flush=True)


def check_nodes(spec: Spec, trials, uri: str, marker: str, args) -> None:
    """On a cluster, what every node that could run a trial must see, checked there by a small
    Ray task before any trial: the data (at the same absolute paths), the sweep's storage, and a
    tracking server that is not each node's own localhost. One ``SpecError`` naming the node."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from harness.resources import worker_fits

    nodes = [n for n in ray.nodes() if n.get("Alive") and worker_fits(n["Resources"], args)]
    here = ray.util.get_node_ip_address()
    host = urllib.parse.urlparse(uri).hostname or ""
    if host in ("localhost", "::1") or host.startswith("127."):
        others = sorted({n["NodeManagerAddress"] for n in nodes} - {here})
        if others:
            raise SpecError(f"MLFLOW_TRACKING_URI {uri} names each node's own machine, and nodes run at "
                            f"{', '.join(others)} besides this one ({here}): use an address they all reach, "
                            "http://HEAD_IP:PORT (make mlflow-server MLFLOW_HOST=0.0.0.0)")
    data = [] if args.measure_only else _distinct_data(trials)
    weights = [] if args.measure_only else sorted(
        {p for t in trials if (p := t.config["model"].get("pretrained")) not in (None, NO_WEIGHTS)})
    probe = ray.remote(num_cpus=0)(_node_problem)
    answers = ray.get([probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                       .remote(spec.name, data, weights, None if args.measure_only else marker) for n in nodes],
                      timeout=600)
    for node, problem in zip(nodes, answers):
        if problem:
            raise SpecError(f"node {node['NodeManagerAddress']} (Ray node {node['NodeID'][:12]}): {problem}")


def _node_problem(spec_name: str, data: list, weights: list[str], marker: str | None) -> str | None:
    """Run on one node by ``check_nodes``: what is wrong there, or None."""
    from harness import storage

    if marker and storage.read_text(marker) is None:
        return (f"does not see the sweep's storage ({marker} is missing there): --storage must be a folder every "
                "node mounts (NFS) or s3://...")
    for path in weights:
        if not os.path.isfile(path):
            return f"{spec_name}: model.pretrained {path}: not found on this node (every node needs the file at that path)"
    for label, section, num_classes in data:
        problem = data_problem(section, num_classes)
        if problem:
            return f"{spec_name}: data of {label!r}: {problem}"
    return None

