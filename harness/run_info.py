"""What a trial records about itself besides its metrics: what its module computes, the machine
it ran on, how many trials shared that machine's CPU, where it ran and which code ran it, and its
evaluation's per-class data.
"""
from __future__ import annotations

import hashlib
import importlib
import os
import platform
import socket
from pathlib import Path
from typing import Any

from gsf.model import effective_module
from harness.tracking import TrialRun


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def fingerprint() -> dict[str, str]:
    """Hardware and software a trial ran on: results are bit-identical only where these match.
    The CPU's model name alone does not tell machines apart whose kernels differ (two "AMD EPYC"
    VMs, one with AVX-512 and one without, gave different Table 5 numbers): torch picks its CPU
    kernels by ``hw.cpu_capability`` (e.g. AVX2, AVX512), sums in an order set by ``hw.threads``,
    and ships other kernels in another build (``sw.torch_git``: the commit it was built from)."""
    import torch

    out = {"hw.cpu": cpu_model(), "hw.cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "hw.cpus": str(os.cpu_count()), "hw.threads": str(torch.get_num_threads()),
           "sw.torch": torch.__version__, "sw.torch_git": (torch.version.git_version or "unknown")[:12],
           "sw.python": platform.python_version()}
    if torch.cuda.is_available():
        out["hw.gpu"] = torch.cuda.get_device_name(0)
        out["sw.cuda"] = str(torch.version.cuda)
    return out


# The project's packages: a sweep ships them to every Ray worker (``runtime_env``'s py_modules),
# so a node needs no checkout; ``code_digest`` says which copy a trial imported.
SHIPPED_PACKAGES = ("gsf", "harness", "reports")


def code_digest() -> str:
    """sha256 (12 hex digits) of the .py files of ``SHIPPED_PACKAGES`` as this process imports them:
    on a worker, the copies the driver shipped. Equal to the driver's when the code is the same."""
    digest = hashlib.sha256()
    for name in SHIPPED_PACKAGES:
        root = Path(importlib.import_module(name).__file__).parent
        for file in sorted(root.rglob("*.py")):
            digest.update(f"{name}/{file.relative_to(root).as_posix()}\0".encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:12]


def where_it_runs() -> dict[str, str]:
    """The host, the Ray node (outside Ray: none), the digest of the code this process runs and
    where that code is (on a Ray worker, the copy runtime_env shipped)."""
    tags = {"host": socket.gethostname(), "ray_node_id": "none", "code_digest": code_digest(),
            "code_path": str(Path(importlib.import_module("harness").__file__).parent.parent)}
    try:
        import ray

        if ray.is_initialized():
            tags["ray_node_id"] = ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 (no Ray, or not in a Ray worker)
        pass
    return tags


def trial_params(job: dict[str, Any]) -> dict[str, str]:
    """Readable params beside the flattened config: the row's name and what its module computes."""
    return {"variant": job.get("variant", ""), "module_effective": effective_module(job["config"].get("model", {}))}


def initialisation(model: dict[str, Any]) -> str:
    """Where the trial's weights start from, for a tag: a run from random weights must say so."""
    if model.get("release_checkpoint"):
        return f"release checkpoint {os.path.basename(model['release_checkpoint'])}"
    if model.get("pretrained") == "none":
        return "random (model.pretrained: none)"
    if model.get("pretrained"):
        return f"pretrained {os.path.basename(model['pretrained'])}"
    return "random (no model.pretrained)"


def trial_tags(job: dict[str, Any], device) -> dict[str, str]:
    """The machine's fingerprint, and how many trials shared this node's CPU (absolute timings of
    trials that ran side by side on a CPU are not comparable with each other)."""
    model = job["config"].get("model", {})
    tags = {"module_effective": effective_module(model), "init": initialisation(model), **fingerprint()}
    cpus = os.cpu_count() or 1
    per_trial = float(job.get("cpus_per_trial", 1.0))
    at_once = max(1, min(int(job.get("sweep_trials", 1)), int(cpus // per_trial)))
    tags["cpu_shared_by"] = "1" if getattr(device, "type", "cpu") == "cuda" else str(at_once)
    return tags


def log_evaluation(run: TrialRun, details: dict[str, Any]) -> None:
    """The last evaluation's per-class counts, predictions and gate histograms, as artifacts
    (the report's Figs. 7 and 8), not as hundreds of metrics."""
    if "confusion" in details:
        run.log_dict({"class_names": details.get("class_names", []), "confusion": details["confusion"]},
                     "evaluation/confusion.json")
    if "predictions" in details:
        run.log_dict({"labels": details.get("labels", []), "predictions": details["predictions"]},
                     "evaluation/predictions.json")
    if details.get("gates"):
        run.log_dict(details["gates"], "evaluation/gates.json")
