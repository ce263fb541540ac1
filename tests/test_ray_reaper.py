"""The watcher that ends a local Ray's leftovers when its driver dies without stopping Ray
(harness/ray_reaper.py), on real processes: a killed driver, a process holding a file in the
session folder (as Ray's agents hold their logs) and one holding a file elsewhere."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

REAPER = Path(__file__).resolve().parent.parent / "harness" / "ray_reaper.py"


def _holding(path: Path) -> subprocess.Popen:
    """A process that opens ``path`` for writing and sleeps."""
    proc = subprocess.Popen([sys.executable, "-c", f"import time; f = open({str(path)!r}, 'w'); print('open', flush=True); "
                             "time.sleep(300)"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "open"
    return proc


def _ended_within(proc: subprocess.Popen, seconds: float) -> bool:
    try:
        proc.wait(timeout=seconds)
        return True
    except subprocess.TimeoutExpired:
        return False


def test_a_killed_driver_takes_what_holds_its_session_folder_with_it(tmp_path):
    session, elsewhere = tmp_path / "session_x", tmp_path / "other"
    (session / "logs").mkdir(parents=True)
    elsewhere.mkdir()
    agent, bystander = _holding(session / "logs" / "agent.err"), _holding(elsewhere / "keep.log")
    driver = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    reaper = subprocess.Popen([sys.executable, str(REAPER), str(driver.pid), str(session)])
    try:
        time.sleep(0.5)
        assert reaper.poll() is None and agent.poll() is None, "nothing happens while the driver lives"
        driver.send_signal(signal.SIGKILL)
        assert _ended_within(agent, 10), "the process holding a session file outlived the driver"
        assert agent.returncode == -signal.SIGTERM
        assert _ended_within(reaper, 10) and reaper.returncode == 0
        assert bystander.poll() is None, "a process holding files elsewhere is not Ray's"
    finally:
        for proc in (agent, bystander, driver, reaper):
            proc.kill()
            proc.wait()


def test_a_driver_that_stops_ray_itself_stops_the_watcher_first(tmp_path):
    session = tmp_path / "session_y"
    session.mkdir()
    agent = _holding(session / "agent.err")
    driver = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    reaper = subprocess.Popen([sys.executable, str(REAPER), str(driver.pid), str(session)])
    try:
        time.sleep(0.5)
        reaper.terminate()  # raytrials.stop_ray
        assert _ended_within(reaper, 10) and reaper.returncode == 0
        driver.kill()
        driver.wait()
        time.sleep(1)
        assert agent.poll() is None
    finally:
        for proc in (agent, driver, reaper):
            proc.kill()
            proc.wait()
