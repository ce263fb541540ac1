"""A trial's outcome in words: the error Ray kept for it, whether its node was lost, a failure in
one line, where it ran."""
from __future__ import annotations

import math
import os


def trial_error(trial) -> BaseException | None:
    """The exception a trial failed with, or None. Ray writes it to the trial's folder on the
    driver first and copies it to the storage later: the first may be all there is yet."""
    import cloudpickle

    try:
        if trial.pickled_error_file and os.path.isfile(trial.pickled_error_file):
            with open(trial.pickled_error_file, "rb") as f:
                return cloudpickle.load(f)
        return trial.get_pickled_error()
    except Exception:  # noqa: BLE001 (an error that does not unpickle here)
        return None


def lost_node(error: BaseException) -> bool:
    """Whether ``error`` is Ray's for a trial whose worker or node went away."""
    import ray.exceptions as rex

    lost = tuple(getattr(rex, n) for n in ("RayActorError", "NodeDiedError", "ActorUnavailableError",
                                           "WorkerCrashedError", "LocalRayletDiedError") if hasattr(rex, n))
    text = str(error).lower()
    return isinstance(error, lost) or "node" in text and ("died" in text or "dead" in text)


def describe_failure(error: BaseException, last: dict, max_failures: int) -> str:
    """A failed trial in one line: a lost node says so (Ray's own words name an actor and a socket)."""
    text = first_line(error)
    if lost_node(error):
        retried = f"Ray retried it {max_failures} time(s) (--max-failures {max_failures})" if max_failures else (
            "no retries (--max-failures 0)")
        return (f"the node running it{on_node(last)} died or became unreachable (its Ray worker was lost); "
                f"{retried}; Ray said: {text}")
    return text


def on_node(result: dict) -> str:
    if not result.get("host"):
        return ""
    return f" on {result['host']} (Ray node {str(result.get('ray_node_id', '?'))[:12]})"


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    # Ray wraps the trial's exception; its last line names the original error.
    lines = [line for line in text if line.strip()]
    return lines[-1].strip() if lines else type(error).__name__

