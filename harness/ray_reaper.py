"""Ends what a local Ray leaves behind when its driver dies without ``ray.shutdown`` (SIGKILL, OOM).

Ray's GCS, raylet and idle workers follow a dead driver within seconds, but its dashboard and
runtime-env agents stay 60-120 s more (Ray 2.60, measured: docs/reliability.md). ``start_ray``
starts this watcher, in a session of its own, with the driver's pid and Ray's session folder;
it waits for the driver to exit, then ends every process that still holds a file in that
folder: SIGTERM, and SIGKILL after ``GRACE_S``. A driver that stops Ray itself stops the
watcher first (``raytrials.stop_ray``). Standard library only: it starts in milliseconds.

    python harness/ray_reaper.py DRIVER_PID SESSION_DIR
"""
from __future__ import annotations

import os
import select
import signal
import sys
import time

GRACE_S = 5.0


def holders(folder: str) -> list[int]:
    """The processes (other than this one) with a file open under ``folder``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if int(pid) == os.getpid():
            continue
        try:
            targets = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:  # gone, or not ours to look at
            continue
        if any(t.startswith(folder + os.sep) for t in targets):
            found.append(int(pid))
    return found


def wait_for_exit(pid: int) -> None:
    try:
        fd = os.pidfd_open(pid)
    except OSError:  # already gone (or no pidfd on this kernel: poll)
        while _alive(pid):
            time.sleep(0.5)
        return
    select.select([fd], [], [])
    os.close(fd)


def reap(folder: str) -> list[int]:
    """End the processes holding files under ``folder``; returns their pids."""
    left = holders(folder)
    for pid in left:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    while any(_alive(p) for p in left) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in left:
        _signal(pid, signal.SIGKILL)
    return left


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # an exited child of ours not yet reaped is a zombie: gone for our purpose
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except OSError:
        pass


if __name__ == "__main__":
    driver, session = int(sys.argv[1]), os.path.realpath(sys.argv[2])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop_ray: the driver shut Ray down itself
    wait_for_exit(driver)
    reap(session)
