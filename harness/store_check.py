"""After the trials: every trial Ray reports finished must have its run in the driver's MLflow
store; one that lacks it is a failed trial, and its numbers come back from Ray's results."""
from __future__ import annotations

import math

from harness.trial_outcome import is_number, on_node


def check_store(client, uri: str, results, spec_name: str, parent: str, measure_only: bool) -> list[str]:
    """Every trial Ray reports finished must have its FINISHED run with the metrics its mode needs
    in the driver's store. One that lacks it is a failed trial (its line says why); its numbers
    and epoch curves come back from Ray's results into a new run of the driver's store."""
    from harness.tracking import TrialRun
    from harness.trial import identity, trial_metrics

    problems = []
    for result in results:
        final = result.metrics or {}
        if result.error or not final.get("final"):
            continue
        job = result.config["job"]
        run_id = final.get("run_id")
        wrong = _missing(client, run_id, job, measure_only)
        if wrong is None:
            continue
        params, tags = identity(job, str(final.get("device", "unknown")))
        tags.update({k: str(final[k]) for k in ("host", "ray_node_id", "code_digest", "attempt") if k in final})
        run = TrialRun(uri, spec_name, parent, job["label"], params,
                       {**tags, "recovered_from": f"Ray Tune results (the trial's own run {run_id} is not usable here)"})
        epochs = _epoch_rows(result)
        for row in epochs:
            run.log_metrics({k: v for k, v in trial_metrics(row).items()}, step=int(row["epoch"]))
        run.log_metrics(trial_metrics(final), step=int(epochs[-1]["epoch"]) if epochs else 0)
        run.end("FINISHED")
        problems.append(f"{job['label']}: finished{on_node(final)}, but {wrong} in the driver's store {uri}: the "
                        "trial's node could not reach that tracking store (there, MLFLOW_TRACKING_URI names another "
                        f"store); its numbers and curves are recovered from Ray's results into run {run.run_id} "
                        "(no evaluation artifacts)")
    return problems


def _missing(client, run_id: str | None, job: dict, measure_only: bool) -> str | None:
    """What the driver's store lacks of a finished trial's run, or None."""
    try:
        run = client.get_run(run_id) if run_id else None
    except Exception:  # noqa: BLE001 (MLflow's error for a run it does not have)
        run = None
    if run is None:
        return f"its run {run_id} is not"
    if run.data.tags.get("trial_hash") != job["hash"]:
        return f"its run {run_id} is another trial's"
    if run.info.status != "FINISHED":
        return f"its run {run_id} is {run.info.status}"
    cfg = job["config"]["measure"]
    needed = ["params_M"] + (["GFLOPs"] if cfg["flops"] else []) + (["latency_ms"] if cfg["latency"] else [])
    needed += [] if measure_only else ["top1"]
    lacking = [k for k in needed if not math.isfinite(run.data.metrics.get(k, math.nan))]
    return f"its run {run_id} has no {', '.join(lacking)}" if lacking else None


def _epoch_rows(result) -> list[dict]:
    """The per-epoch reports among a trial's Ray results (progress and final ones left out)."""
    frame = result.metrics_dataframe
    if frame is None or "epoch" not in frame:
        return []
    rows = []
    for row in frame.to_dict("records"):
        epoch, batch = row.get("epoch"), row.get("batch")
        if is_number(epoch) and not is_number(batch) and str(row.get("final")) != "True":
            rows.append(row)
    return rows

