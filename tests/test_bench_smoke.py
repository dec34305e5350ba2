"""The benchmarks (`make bench`) still run against the node as it is, and RESULTS.md is written as promised.

`make bench` is run rarely (on a quiet machine, at the end); without this test a change to the node
that breaks it would be found only then. Tiny sizes, one repetition: a few seconds, no figure judged.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench import common

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.engine
def test_bench_runs_and_judges_every_goal(busybox_image: str) -> None:
    args = ["--seq", "1", "--warmup", "0", "--rounds", "1", "--concurrency", "2"]
    args += ["--reps", "1", "--output-mib", "1", "--output-warmup", "0", "--profile", "never", "--no-write"]
    before = (ROOT / "bench" / "RESULTS.md").read_bytes()
    res = subprocess.run(
        [sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True, text=True, timeout=240, check=False
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert (ROOT / "bench" / "RESULTS.md").read_bytes() == before  # --no-write
    summary = res.stdout[res.stdout.index("### Goals") : res.stdout.index("### 1.")]
    rows = re.findall(r"^\| (e2e|output) \| (.+?) \| (≤ [^|]+) \| ([^|]+) \| \*\*(met|missed)\*\* \|$", summary, re.M)
    figures = [(bench, figure.split(":")[0].split(" through")[0]) for bench, figure, *_ in rows]
    assert figures == [
        ("e2e", "no-op Run, sequential"),
        ("e2e", "no-op Run, 2-way concurrent"),
        ("output", "1 MiB of short lines"),
        ("output", "node peak RSS (VmHWM, summed over the node's processes)"),
        ("output", "1 MiB as 8 lines of 0.125 MiB"),
    ], summary
    assert res.stdout.count("<!-- BEGIN goals-") == 2  # each section carries its own goals table
    assert "leftover" not in res.stderr  # every container removed by the benchmark itself


def test_results_file_keeps_analysis_rebuilds_summary_and_names_dirty_trees(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    common.update_results({}, "### Machine\n\nm0", ("e2e", "output"), path)
    text = path.read_text()
    path.write_text("old preamble\n" + text[len(common.HEADER) :] + "\n## Analysis\n\nby hand\n")
    rows_e2e = [["sequential", "≤ 1.03x", "1.010x", "**met**"]]
    rows_out = [["short lines", "≤ 1.50x", "1.70x", "**missed**"]]
    e2e = "### 1. e2e\n\n" + common.goals_block("e2e", rows_e2e)
    out = "### 2. output\n\n" + common.goals_block("output", rows_out)
    common.update_results({"e2e": e2e, "output": out}, "### Machine\n\nm1", ("e2e", "output"), path)
    common.update_results({"e2e": e2e.replace("1.010x", "1.020x")}, "### Machine\n\nm2", ("e2e", "output"), path)
    text = path.read_text()
    assert text.startswith(common.HEADER) and "old preamble" not in text
    assert text.rstrip().endswith("## Analysis\n\nby hand")
    summary = text[text.index("### Goals") : text.index("<!-- END summary -->")]
    assert "| e2e | sequential | ≤ 1.03x | 1.020x | **met** |" in summary
    assert "| output | short lines | ≤ 1.50x | 1.70x | **missed** |" in summary
    assert "m2" in text and "m1" not in text
    assert text.count("<!-- BEGIN e2e -->") == 1


def test_code_row_says_uncommitted_changes_only_for_a_dirty_tree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "bench").mkdir()
    (tmp_path / "node.py").write_text("a\n")
    (tmp_path / "bench" / "RESULTS.md").write_text("r\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    monkeypatch.setattr(common, "ROOT", tmp_path)
    (tmp_path / "bench" / "RESULTS.md").write_text("a run's own output\n")
    assert "uncommitted changes" not in common.code_version()
    (tmp_path / "node.py").write_text("b\n")
    assert "uncommitted changes in `node.py`" in common.code_version()
