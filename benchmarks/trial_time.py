"""Where a sweep trial's time goes: building, measuring (side-by-side ratio, params, FLOPs,
latency), training and evaluating, timed step by step in one process as ``harness.trial`` runs them.

    python benchmarks/trial_time.py ablations/table5_components.yaml --variant GSF --threads 1

``--threads 1`` is what a Ray worker with one CPU gets. Answers "can a trial be made cheaper, so
that the same budget runs more seeds?": only the training share can buy seeds back.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gsf import ModelConfig, build_model  # noqa: E402
from harness import train  # noqa: E402
from harness.measure import measure, relative_cost  # noqa: E402
from harness.spec import TrialConfig, load_spec  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("spec")
    p.add_argument("--profile", default=None)
    p.add_argument("--variant", default=None, help="the row to time (default: the first)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    spec = load_spec(args.spec, args.profile)
    trial = next(t for t in spec.trials if args.variant in (None, t.variant))
    cfg = TrialConfig.model_validate({k: v for k, v in trial.config.items() if k != "seed"})
    steps: dict[str, float] = {}

    def timed(name, fn, *a, **k):
        t0 = time.perf_counter()
        out = fn(*a, **k)
        steps[name] = steps.get(name, 0.0) + time.perf_counter() - t0
        return out

    torch.manual_seed(trial.seed)
    model = timed("build", build_model, cfg.model)
    if trial.baseline:
        base = next(t for t in spec.trials if t.variant == trial.baseline and t.axes == trial.axes)
        baseline = build_model(ModelConfig.model_validate(base.config["model"]))
        timed("latency_x (side by side)", relative_cost, model, baseline, cfg.model.num_frames, cfg.measure)
    timed("params, FLOPs, latency", measure, model, cfg.model.num_frames, cfg.measure)
    evaluate = train.evaluate
    train.evaluate = lambda *a, **k: timed("evaluate", evaluate, *a, **k)
    try:
        timed("fit (train + evaluate)", train.fit, model, cfg, seed=trial.seed, device=torch.device("cpu"))
    finally:
        train.evaluate = evaluate
    total = sum(v for k, v in steps.items() if k != "evaluate")
    print(f"{spec.name} {trial.label}, {args.threads} thread(s):")
    for name, seconds in steps.items():
        print(f"  {name:28s} {seconds:8.2f} s  {100 * seconds / total:5.1f}%")
    print(f"  {'total':28s} {total:8.2f} s")


if __name__ == "__main__":
    main()
