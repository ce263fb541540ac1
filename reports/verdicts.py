"""Verdicts on a spec's claims ("GSF > GSM"): the top-1 difference, a 95% interval, holds or not.

For each claim ``A > B`` at each grid point (axis values):

- the seeds both rows ran are paired (same seed: same initialisation and data order), and the
  interval is the paired t-interval of the per-seed differences A - B;
- rows without common seeds are compared with Welch's t-interval of the two means;
- the verdict is "holds" (interval above 0), "reversed" (below 0), or "unresolved at n seeds",
  with the number of seeds that would resolve it if the difference and the spread stayed as
  observed (the smallest n with t(0.975, n-1) * sd / sqrt(n) < |difference|).

Rank agreement: Kendall's tau-b between our row order (mean top-1) and the paper's.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import pandas as pd
from scipy import stats

LEVEL = 0.95
MAX_SEEDS = 1000  # "more than this" is reported as such: the difference is practically a tie


@dataclass
class Verdict:
    claim: str
    better: str
    worse: str
    point: str            # axis values of the grid point ("" without axes)
    n: int                # seeds (pairs, when paired) that entered the interval
    method: str           # "paired t" | "Welch t" | "-"
    diff: float           # mean top-1 of A minus B (points)
    low: float
    high: float
    verdict: str          # "holds" | "reversed" | "unresolved at n seeds"
    seeds_needed: float   # seeds a resolved answer would take at the observed spread (nan: resolved)
    paper_diff: float     # the paper's A - B (nan where it has no number)

    @property
    def summary(self) -> str:
        where = f" [{self.point}]" if self.point else ""
        if self.method == "-":
            return f"{self.claim}{where}: {self.verdict}"
        interval = f"{self.diff:+.2f} [{self.low:+.2f}, {self.high:+.2f}]"
        text = f"{self.claim}{where}: {interval} ({self.method}, {self.n} seeds) → {self.verdict}"
        if self.verdict.startswith("unresolved"):
            text += f"; {_needed_text(self.seeds_needed)} at this spread"
        if not math.isnan(self.paper_diff):
            text += f"; paper {self.paper_diff:+.2f}"
        return text


def _needed_text(n: float) -> str:
    if math.isinf(n):
        return f"more than {MAX_SEEDS} seeds"
    return f"~{int(n)} seeds"


def seeds_to_resolve(diff: float, sd: float, paired: bool = True) -> float:
    """Smallest n (per row) whose 95% interval excludes 0 if mean and sd stay as observed.

    Paired: sd of the per-seed differences, df n-1. Unpaired (equal n per row): sd is the
    root-mean-square of the two rows' sds, the standard error sd*sqrt(2/n), df 2n-2."""
    if sd == 0:
        return 2.0 if diff != 0 else math.inf
    if diff == 0:
        return math.inf
    for n in range(2, MAX_SEEDS + 1):
        df = n - 1 if paired else 2 * n - 2
        se = sd / math.sqrt(n) if paired else sd * math.sqrt(2.0 / n)
        if stats.t.ppf(0.5 + LEVEL / 2, df) * se < abs(diff):
            return float(n)
    return math.inf


def judge(a: dict[int, float], b: dict[int, float]) -> tuple[int, str, float, float, float, float]:
    """(n, method, diff, low, high, seeds_needed) for per-seed top-1 ``a`` over ``b``."""
    common = sorted(set(a) & set(b))
    if len(common) >= 2:
        d = [a[s] - b[s] for s in common]
        n, mean, sd = len(d), sum(d) / len(d), pd.Series(d).std(ddof=1)
        half = stats.t.ppf(0.5 + LEVEL / 2, n - 1) * sd / math.sqrt(n)
        return n, "paired t", float(mean), float(mean - half), float(mean + half), seeds_to_resolve(mean, sd, True)
    xa, xb = pd.Series(list(a.values()), dtype=float), pd.Series(list(b.values()), dtype=float)
    mean = float(xa.mean() - xb.mean())
    if len(xa) < 2 or len(xb) < 2:
        return min(len(xa), len(xb)), "-", mean, math.nan, math.nan, math.nan
    va, vb = xa.var(ddof=1) / len(xa), xb.var(ddof=1) / len(xb)
    se = math.sqrt(va + vb)
    if se == 0:
        return min(len(xa), len(xb)), "Welch t", mean, mean, mean, 2.0 if mean else math.inf
    df = (va + vb) ** 2 / (va ** 2 / (len(xa) - 1) + vb ** 2 / (len(xb) - 1))
    half = stats.t.ppf(0.5 + LEVEL / 2, df) * se
    sd = math.sqrt((xa.var(ddof=1) + xb.var(ddof=1)) / 2)
    return (min(len(xa), len(xb)), "Welch t", float(mean), float(mean - half), float(mean + half),
            seeds_to_resolve(mean, sd, False))


def verdict_of(n: int, method: str, low: float, high: float) -> str:
    if method == "-":
        return f"unresolved at {n} seed{'s' if n != 1 else ''} (a spread needs 2 or more per row)"
    if low > 0:
        return "holds"
    if high < 0:
        return "reversed"
    return f"unresolved at {n} seeds"


def per_seed_top1(spec, runs: pd.DataFrame, metric: str = "top1") -> dict[tuple, dict[int, float]]:
    """(variant, axes) -> {seed: top-1} from the runs of the spec's trials."""
    by_hash = runs.set_index("trial_hash")[metric].dropna() if len(runs) and metric in runs.columns else pd.Series()
    out: dict[tuple, dict[int, float]] = {}
    for t in spec.trials:
        key = (t.variant, tuple(t.axes.items()))
        out.setdefault(key, {})
        if t.hash in by_hash.index:
            out[key][t.seed] = float(by_hash[t.hash])
    return out


def claim_verdicts(spec, runs: pd.DataFrame, table: pd.DataFrame | None = None) -> list[Verdict]:
    """One verdict per claim and grid point; ``table`` (the rendered one) supplies paper_top1."""
    values = per_seed_top1(spec, runs)
    points = list(dict.fromkeys(axes for _, axes in values))
    paper = {}
    if table is not None and "paper_top1" in table.columns and "variant" in table.columns:
        paper = dict(zip(table["variant"], table["paper_top1"]))
    out = []
    for better, worse in spec.claims:
        for axes in points:
            point = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in axes)
            a, b = values.get((better, axes), {}), values.get((worse, axes), {})
            paper_diff = float(paper.get(better, math.nan)) - float(paper.get(worse, math.nan))
            claim = f"{better} > {worse}"
            if not a or not b:
                missing = worse if a else better
                out.append(Verdict(claim, better, worse, point, 0, "-", math.nan, math.nan, math.nan,
                                   f"no result for {missing}", math.nan, paper_diff))
                continue
            n, method, diff, low, high, needed = judge(a, b)
            verdict = verdict_of(n, method, low, high)
            out.append(Verdict(claim, better, worse, point, n, method, diff, low, high, verdict,
                               needed if verdict.startswith("unresolved") else math.nan, paper_diff))
    return out


def kendall_tau(table: pd.DataFrame) -> tuple[float, int]:
    """Kendall's tau-b of our mean top-1 against the paper's over the rows that have both."""
    if not {"top1", "paper_top1"} <= set(table.columns):
        return math.nan, 0
    both = table[["top1", "paper_top1"]].dropna()
    if len(both) < 2:
        return math.nan, len(both)
    tau = stats.kendalltau(both["top1"], both["paper_top1"]).statistic
    return float(tau), len(both)


def order_text(table: pd.DataFrame, column: str) -> str:
    """'TSM > GSF > ...' by ``column`` (rows labelled by variant)."""
    if column not in table.columns or "variant" not in table.columns:
        return ""
    rows = table[["variant", column]].dropna().sort_values(column, ascending=False, kind="stable")
    return " > ".join(str(v) for v in rows["variant"])


# verdicts.csv: what a reader looks for first (MLflow's preview shows four columns), then how it
# was computed; sweep.json keeps the raw floats.
VERDICT_COLUMNS = ["claim", "point", "verdict", "diff", "interval", "paper_diff", "n", "method", "seeds_needed", "low",
                   "high", "better", "worse"]


def verdicts_frame(verdicts: list[Verdict]) -> pd.DataFrame:
    """One row per verdict: differences in points to 0.01, the interval also as text,
    ``seeds_needed`` as the report words it ('~15 seeds', 'more than 1000 seeds'; empty once
    resolved); no ``point`` column where the grid has no axes."""
    frame = pd.DataFrame([asdict(v) for v in verdicts], columns=[c for c in VERDICT_COLUMNS if c != "interval"])
    numbers = ["diff", "low", "high", "paper_diff"]
    frame[numbers] = frame[numbers].astype(float).round(2)
    frame["interval"] = [f"[{lo:+.2f}, {hi:+.2f}]" if lo == lo else "" for lo, hi in zip(frame["low"], frame["high"])]
    frame["seeds_needed"] = [_needed_text(n) if n == n else "" for n in frame["seeds_needed"].astype(float)]
    return frame[[c for c in VERDICT_COLUMNS if c != "point" or frame["point"].astype(bool).any()]]


def verdicts_markdown(verdicts: list[Verdict], table: pd.DataFrame) -> str:
    """The claims section of table.md: one line per verdict, then the rank agreement."""
    lines = []
    if verdicts:
        lines += ["## Claims (top-1, 95% interval of the difference; paired by seed where rows share seeds)", ""]
        lines += [f"- {v.summary}" for v in verdicts]
    tau, n = kendall_tau(table)
    if n >= 2:
        lines += ["", f"Rank agreement with the paper (Kendall tau-b over {n} rows): {tau_text(tau)}. "
                      f"Ours: {order_text(table, 'top1')}. Paper: {order_text(table, 'paper_top1')}."]
    return "\n".join(lines)


def tau_text(tau: float | None) -> str:
    return "undefined (tied rows)" if tau is None or math.isnan(tau) else f"{tau:+.2f}"
