"""The README is one screen plus links, and the links of the README and of docs/ lead somewhere.

Relative links must name files that exist, and an anchor (`file.md#heading`) a heading of that file
(GitHub's slug). Every `make ablation-*` target the README or a doc names is a target of the
Makefile, and every spec in ablations/ has its target (asked of make itself, with `make -n`).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MARKDOWN = [README, *sorted((ROOT / "docs").glob("*.md"))]
MAX_README_LINES = 150

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", re.M)
# a concrete target name: placeholders such as ablation-tableN or ablation-NAME are not targets
TARGET = re.compile(r"\bablation-[a-z0-9][a-z0-9-]*(?![A-Za-z0-9_-])")
needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def _prose(text: str) -> str:
    """The text outside fenced code blocks (links and headings there are not links and headings)."""
    return FENCE.sub("", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: link text kept, lower case, punctuation but - and _ dropped."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for heading in HEADING.findall(_prose(path.read_text(encoding="utf-8"))):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def relative_links(path: Path) -> list[str]:
    text = INLINE_CODE.sub("", _prose(path.read_text(encoding="utf-8")))
    return [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t, re.I)]


def link_targets(path: Path) -> set[Path]:
    return {(path.parent / link.partition("#")[0]).resolve() for link in relative_links(path)}


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    """'file: link (why)' for each relative link of a markdown file that leads nowhere."""
    bad = []
    for link in relative_links(path):
        target, _, anchor = link.partition("#")
        dest = (path.parent / target).resolve() if target else path
        if not dest.exists():
            bad.append(f"{path.relative_to(root)}: {link} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{path.relative_to(root)}: {link} (no heading #{anchor} in {dest.name})")
    return bad


def make_n(*args: str) -> subprocess.CompletedProcess:
    """`make -n` in the project, the install stamp taken as up to date (nothing is installed or run)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEFILES")}
    for var in ("PROFILE", "RESULTS", "SWEEP_ARGS"):
        env.pop(var, None)
    return subprocess.run(["make", "-n", "-o", ".venv/.installed", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def makefile_ablation_targets() -> set[str]:
    """The ablation-* targets make knows, from its database."""
    db = make_n("-p", "install")
    assert db.returncode == 0, db.stderr
    return set(re.findall(r"^(ablation-[A-Za-z0-9-]+):", db.stdout, re.M))


def spec_of(target: str) -> str:
    """The spec file `make TARGET` sweeps (its make -n command line), relative to the project."""
    out = make_n(target)
    assert out.returncode == 0, f"make {target}: {out.stderr.strip()}"
    found = re.findall(r"-m harness\.sweep (ablations/\S+\.yaml)", out.stdout)
    assert len(found) == 1, f"make {target} runs {out.stdout!r}"
    return found[0]


def test_readme_is_one_screen_plus_links():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines (at most {MAX_README_LINES})"
    assert re.search(r"make ablation-table5\b", "\n".join(lines[:40]))
    assert re.search(r"make test\b", "\n".join(lines[:40]))


def test_every_doc_is_linked_from_the_readme_or_another_doc():
    linked = set().union(*(link_targets(path) for path in MARKDOWN))
    orphans = [p.name for p in MARKDOWN[1:] if p.resolve() not in linked]
    assert not orphans, f"docs/ files no link leads to: {orphans}"


def test_relative_links_lead_to_files_and_headings():
    bad = [b for path in MARKDOWN for b in broken_links(path)]
    assert not bad, "\n".join(bad)


def test_the_link_check_sees_a_broken_link_and_a_wrong_anchor(tmp_path):
    (tmp_path / "a.md").write_text("# Title: `x` and Y's\n\n## Same\n\n## Same\n")
    doc = tmp_path / "b.md"
    doc.write_text("[ok](a.md#title-x-and-ys) [ok](a.md#same-1) [ok](#here)\n\n## Here\n\n"
                   "```\n[in code](nowhere.md)\n```\n[web](https://example.org/x.md)\n"
                   "[gone](gone.md) [bad anchor](a.md#nope)\n")
    assert broken_links(doc, root=tmp_path) == ["b.md: gone.md (no such file)", "b.md: a.md#nope (no heading #nope in a.md)"]


def test_the_synthetic_benchmark_reference_is_read_from_docs():
    from reports import report

    assert Path(report.SYNTHETIC_MD).resolve() == (ROOT / "docs" / "synthetic.md").resolve()
    machines = report.reference_machines()
    assert machines, "no line of `hw.x=...` marks in docs/synthetic.md"
    # every reference machine carries every mark that changes the digits, and a name
    assert all(set(report.FINGERPRINT_KEYS) | {"ref.name"} <= set(m) for m in machines), machines


@needs_make
def test_make_targets_named_in_readme_and_docs_exist():
    named = sorted({t for path in MARKDOWN for t in TARGET.findall(path.read_text(encoding="utf-8"))})
    assert "ablation-table5" in named
    known = makefile_ablation_targets()
    assert not set(named) - known, f"named in README/docs but not in the Makefile: {sorted(set(named) - known)}"
    for target in named:
        spec_of(target)


@needs_make
def test_every_spec_has_its_make_target():
    targets = makefile_ablation_targets()
    swept = {spec_of(t) for t in targets}
    specs = {f"ablations/{p.name}" for p in (ROOT / "ablations").glob("*.yaml")}
    assert specs - swept == set(), f"specs without a make target: {sorted(specs - swept)}"
    assert swept - specs == set(), f"make targets of missing specs: {sorted(swept - specs)}"
    assert make_n("ablation-no-such-table").returncode != 0
