"""MLflow's UI on a finished tiny sweep, in a real browser (headless Chromium through Playwright):
the view the sweep prints opens grouped by row with the axes and costs on screen, its charts show
every run, the report's link to the sweep's run opens the classic layout with the verdicts, and
the report page says what ran and marks the baseline.
Screenshots go to RESULTS/screenshots/. Needs Debian's chromium (.ci/run installs it)."""
from __future__ import annotations

import html
import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from test_sweep_e2e import ENV, ROOT, _spec

from reports.mlflow_ui import verdicts_line

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WIDTH = 1280


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(db, port: int, log) -> subprocess.Popen:
    """``mlflow server`` on the sweep's store; returns once it answers."""
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{db}",
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    for _ in range(120):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).close()
            return server
        except OSError:
            assert server.poll() is None, "mlflow server exited"
            time.sleep(1)
    raise AssertionError("mlflow server did not answer in 120 s")


def _open(page, url: str, ready: str) -> None:
    """``url``, once ``ready`` shows, with the Assistant panel closed as a user does once (MLflow
    opens it on a local server's first visit; the browser then remembers)."""
    page.goto(url)
    page.get_by_text(ready).first.wait_for(timeout=60_000)
    close = page.get_by_role("button", name="Close")  # the panel's; nothing else on these pages has that label
    if close.count() and close.last.is_visible():
        close.last.click()
    time.sleep(1.5)  # columns settle to the view's widths


def _on_screen(locator) -> bool:
    box = locator.bounding_box()
    return box is not None and box["x"] >= 0 and box["x"] + box["width"] <= WIDTH


@pytest.mark.slow  # a sweep, an MLflow server and a browser: about two minutes
@pytest.mark.timeout(900)
def test_mlflow_ui_opens_grouped_rows_axes_costs_and_verdicts(tmp_path):
    if CHROMIUM is None:
        pytest.skip("chromium not found on PATH: apt-get install chromium (.ci/run does)")
    from playwright.sync_api import sync_playwright

    variants = [{"name": n, "set": {"model.gating": g, "model.fusion": f}, "paper_row": {"model": n},
                 **({"baseline": "TSN"} if n != "TSN" else {})}
                for n, g, f in (("GSF", "learned", "learned"), ("TDN", -1, "sum"), ("TSN", 0, "sum"))]
    path = _spec(tmp_path, variants, claims=["GSF > TSN", "TDN > TSN"])
    results, port = tmp_path / "results", _free_port()
    proc = subprocess.run([sys.executable, "-m", "harness.sweep", str(path), "--results-dir", str(results)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env={**ENV, "MLFLOW_UI_URL": f"http://127.0.0.1:{port}"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    view = re.search(r"runs with the key columns \(after `make mlflow-ui`\): (\S+)", proc.stdout).group(1)
    meta = json.loads((results / "mini" / "sweep.json").read_text())
    parent = meta["parent_run_id"]
    link = re.search(rf'href="([^"]*/runs/{parent}[^"]*)"', (results / "index.html").read_text()).group(1)
    verdicts = "Verdicts: " + verdicts_line(meta["verdicts"])
    top1 = {r["label"]: [run["top1"] for run in r["runs"]] for r in meta["rows"]}
    note = lambda page: page.get_by_test_id("note-editor-preview-content").get_by_text(verdicts)  # noqa: E731
    shots = results / "screenshots"
    shots.mkdir()

    with open(tmp_path / "mlflow-server.log", "w") as log:
        server = _serve(results / "mlflow.db", port, log)
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
                page = browser.new_page(viewport={"width": WIDTH, "height": 900})

                _open(page, view, "Group: GSF")
                page.screenshot(path=shots / "view.png")
                for variant in ("GSF", "TDN", "TSN"):  # one group per row, its mean beside it
                    assert page.get_by_text(f"Group: {variant}").is_visible(), variant
                assert page.get_by_text("(average)").count() >= 3
                headers = {h.get_attribute("col-id"): h for h in page.locator(".ag-header-cell[col-id]").all()}
                for column in ("metrics.`top1`", "params.`model.gating`", "params.`model.fusion`", "metrics.`params_x`",
                               "metrics.`gflops_x`", "metrics.`latency_x`", "metrics.`params_M`", "metrics.`GFLOPs`"):
                    assert column in headers and _on_screen(headers[column]), f"{column} not within {WIDTH} px"
                assert page.get_by_text(verdicts).is_visible(), "the verdicts above the runs list"
                assert page.get_by_text("Additional runs").is_visible()  # the group holding the sweep's run
                assert page.get_by_text(f"mini sweep {meta['generated'][:4]}").first.is_visible()

                _open(page, view + "&compareRunsMode=CHART", "Model metrics")
                page.screenshot(path=shots / "charts.png")
                text = page.inner_text("body")
                charts = text[text.index("Model metrics"):]
                assert charts.index("top1") < charts.index("gflops_x vs. top1") < charts.index("params_x")
                assert "latency_ms" not in charts
                for values in top1.values():  # every run's bar, TSN's too
                    for value in values:
                        assert f"{value:.2f}" in charts, value

                assert "workflowType=machine_learning" in link
                _open(page, html.unescape(link), "Description")
                page.screenshot(path=shots / "parent_run.png")
                assert note(page).is_visible(), "the verdicts first in the run's description"
                assert page.get_by_text("Evaluation runs").count() == 0, "the GenAI layout"

                page.goto((results / "index.html").as_uri())  # the report page: what ran, ratios, the baseline
                page.screenshot(path=shots / "report.png", full_page=True)
                assert page.get_by_text("Ran:").first.is_visible() and "ResNet-18 x0.125" in page.inner_text("body")
                assert page.get_by_role("cell", name="TSN (baseline)").first.is_visible()
                assert page.get_by_role("columnheader", name="params_x").first.is_visible()
                browser.close()
        finally:
            server.terminate()
            server.wait(timeout=30)
    for name in ("view", "charts", "parent_run", "report"):
        assert (shots / f"{name}.png").stat().st_size > 10_000, name
