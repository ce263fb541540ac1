"""The report and its figures, each one command, from a results folder (what ``harness.sweep``
wrote: RESULTS_DIR/<spec>/sweep.json, table.csv, and the MLflow store it names).

    python -m reports RESULTS_DIR [--mlflow-url URL]     # RESULTS_DIR/index.html (+ fig9.png over all sweeps)
    python -m reports table SWEEP_DIR [-o PNG]           # Δ top-1 and cost over the baseline, sizes
    python -m reports fig7 SWEEP_DIR [--row R] [--baseline B] [--top K] [-o PNG]
    python -m reports fig8 SWEEP_DIR [--row R] [-o PNG]
    python -m reports fig9 SWEEP_DIR [SWEEP_DIR ...] [-o PNG]

SWEEP_DIR is RESULTS_DIR/<spec name>. Row names are the spec's variant names (or row labels).
Exit status 2 with one line for a folder that holds no sweep.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

FIGURES = ("table", "fig7", "fig8", "fig9")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        print(f"python -m reports: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def _meta(folder: str) -> dict:
    path = Path(folder) / "sweep.json"
    if not path.is_file():
        print(f"python -m reports: error: {path}: not found; SWEEP_DIR is RESULTS_DIR/<spec> as written by "
              f"harness.sweep", file=sys.stderr)
        raise SystemExit(2)
    return json.loads(path.read_text())


def _client(meta: dict):
    from mlflow.tracking import MlflowClient

    return MlflowClient(os.environ.get("MLFLOW_TRACKING_URI") or meta["tracking_uri"])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in FIGURES:
        return figure(argv[0], argv[1:])
    p = _Parser(prog="python -m reports", description=__doc__.split("\n\n")[0],
                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("results_dir", help="the sweeps' --results-dir (default of make: results)")
    p.add_argument("--mlflow-url", default=None,
                   help="MLflow UI address for the run links (default: MLFLOW_UI_URL, a tracking server's own "
                        "address, else http://127.0.0.1:5000)")
    args = p.parse_args(argv)
    from reports.report import load_sweeps, write_index

    if not Path(args.results_dir).is_dir():
        p.error(f"{args.results_dir}: not a folder")
    if not load_sweeps(args.results_dir):
        p.error(f"{args.results_dir}: no sweep found (no */sweep.json); run a sweep first, e.g. make ablation-table5")
    print(f"wrote {write_index(args.results_dir, args.mlflow_url)}")
    return 0


def figure(name: str, argv: list[str]) -> int:
    import pandas as pd

    from reports import report

    p = _Parser(prog=f"python -m reports {name}")
    p.add_argument("sweeps", nargs="+" if name == "fig9" else 1, metavar="SWEEP_DIR")
    p.add_argument("-o", "--output", default=None, help="PNG to write (default: SWEEP_DIR/<figure>.png)")
    if name in ("fig7", "fig8"):
        p.add_argument("--row", default=None, help="the row to show (a variant name)")
    if name == "fig7":
        p.add_argument("--baseline", default=None, help="the row it is compared with (default: the spec's baseline)")
        p.add_argument("--top", type=int, default=10, help="how many classes")
    args = p.parse_args(argv)
    metas = [_meta(f) for f in args.sweeps]
    out = Path(args.output or Path(args.sweeps[0]) / f"{name}.png")
    meta = metas[0]
    if name == "table":
        made = report.table_figure(meta, pd.read_csv(Path(args.sweeps[0]) / "table.csv"), out)
    elif name == "fig7":
        made = report.fig7(meta, _client(meta), out, args.row, args.baseline, args.top)
    elif name == "fig8":
        made = report.fig8(meta, _client(meta), out, args.row)
        if made:
            print(made[1])
    else:
        made = report.fig9([(m, pd.read_csv(Path(f) / "table.csv")) for m, f in zip(metas, args.sweeps)], out)
    if not made:
        print(f"python -m reports {name}: nothing to draw for {', '.join(args.sweeps)} (no such row, or its runs "
              f"recorded no data for this figure)", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
