"""What the driver hears from Ray Tune while the trials run: a line per trial event (``Progress``:
finished, failed, retried, each epoch, progress within one) and the Ctrl-C stopper
(``OnInterrupt``). It imports Ray Tune: ``harness.raytrials`` imports it once the trials start."""
from __future__ import annotations

import signal
import sys
import time

from ray.tune import Callback, Stopper

from harness.trial_outcome import first_line, is_number, lost_node, on_node, trial_error
from reports.render import cell  # the table's rounding rule, so a number reads the same on every line


class Progress(Callback):
    """One line per finished trial, per epoch and every --progress-every seconds within an
    epoch; a warning as soon as a trial's run is not in the driver's store; retries."""

    def __init__(self, jobs: list[dict], on_interrupt: OnInterrupt, args, client, uri: str):
        self.done, self.t0, self.checked = 0, time.time(), set()
        self.jobs, self.on_interrupt, self.args, self.client, self.uri = jobs, on_interrupt, args, client, uri

    def _line(self, trial, status: str, result: dict | None = None, error: str = "") -> None:
        self.done += 1
        r = result or trial.last_result or {}
        parts = [f"{k} {cell(k, r[k])}" for k in ("top1", "params_M", "GFLOPs", "latency_ms") if k in r]
        print(f"[{self.done}/{len(self.jobs)}] {status} {trial.config['job']['label']}: "
              f"{'; '.join(filter(None, [', '.join(parts), error]))} ({time.time() - self.t0:.0f} s)", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._line(trial, "stopped" if self.on_interrupt.requested else "done")

    def on_trial_error(self, iteration, trials, trial, **info):
        # One line: the error's own (a DataError names the file). The traceback stays in the
        # trial's folder (error.txt) and in its MLflow run (traceback.txt, tag traceback).
        error = trial_error(trial)
        where = f"; traceback in {trial.path}/error.txt" if trial.path else ""
        self._line(trial, "FAILED", error=(first_line(error) if error else "failed") + where)

    def on_trial_recover(self, iteration, trials, trial, **info):
        error = trial_error(trial)  # None: no error file yet, Ray's message is all there is
        why = "its node died or became unreachable" if error is None or lost_node(error) else first_line(error)
        print(f"    {trial.config['job']['label']}: {why}{on_node(trial.last_result or {})} (attempt "
              f"{trial.num_failures} of {self.args.max_failures + 1}); Ray retries it from its last checkpoint",
              flush=True)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        label = trial.config["job"]["label"]
        if result.get("run_id") and trial.trial_id not in self.checked:
            self.checked.add(trial.trial_id)
            if _run_status(self.client, result["run_id"]) is None:
                print(f"warning: {label}{on_node(result)} writes to a tracking store that is not the driver's "
                      f"(its run {result['run_id']} is not in {self.uri}); the sweep will fail it at the end",
                      file=sys.stderr, flush=True)
        if result.get("progress"):
            wait = result.get("data_wait_fraction")
            print(f"    {label}: epoch {result['epoch']} batch {result['batch']}/{result['batches']}, "
                  f"loss {result['loss']:.3f}, {result['clips_per_s']:.1f} clips/s"
                  + (f", waiting for data {100 * wait:.0f}% of the time" if wait is not None else "")
                  + f", ETA {_duration(result['eta_s'])}", flush=True)
        elif "epoch" in result and not result.get("final"):
            # top1 only after an epoch that was evaluated (train.eval_every)
            top1 = f" top1 {cell('top1', result['top1'])}" if is_number(result.get("top1")) else ""
            print(f"    {label}: epoch {result['epoch']} loss {result.get('train_loss', float('nan')):.3f}{top1}"
                  f"{on_node(result) if self.args.cluster else ''}", flush=True)


# Ctrl-C: Ray Tune's own handler ends the run as if it had completed, so the sweep takes the
# signal itself and asks Tune to stop every trial; a second Ctrl-C stops at once.
class OnInterrupt(Stopper):
    requested = False  # a plain attribute: Tune pickles its stopper

    def __call__(self, trial_id, result):
        return False

    def stop_all(self):
        return self.requested

    def on_sigint(self, signum, frame):
        self.requested = True
        print("\ninterrupt: stopping the trials (Ctrl-C again to stop at once)", file=sys.stderr, flush=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def _run_status(client, run_id: str) -> str | None:
    try:
        return client.get_run(run_id).info.status
    except Exception:  # noqa: BLE001 (MLflow raises its own error for a run it does not have)
        return None

