"""One source for the figures: what the pages say of a measured figure is what
docs/benchmarks/*.json holds (each claim below must be found on its page exactly once, with the
JSON's value as the page rounds it), one Python version is stated everywhere (pyproject's
``requires-python``), and the quickstart's example summary is laid out as the code prints it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lightning_online.callbacks.monitor import format_summary

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "docs" / "benchmarks"


def _value(file: str, path: str) -> float:
    node = json.loads((BENCH / file).read_text())
    for key in path.split("."):
        node = node[int(key)] if isinstance(node, list) else node[key]
    return float(node)


INFLIGHT = "external_inflight.json"
#: (page, pattern with one group: the number, JSON file, dotted path, scale, decimals)
CLAIMS = [
    (page, pattern, INFLIGHT, path, scale, digits)
    for page in ("docs/cluster.md", "docs/external-solvers.md")
    for pattern, path, scale, digits in (
        (r"(\d+) KB \(PSS\)", "after.memory.0.helper_pss_per_run_kb", 1, 0),
        (r"and (\d+) KB (?:at|with) 1,000", "after.memory.1.helper_pss_per_run_kb", 1, 0),
        (
            r"([\d.]+) MB\)?,? before|Python processes per run:\s+([\d.]+) MB",
            "before.memory.0.helper_pss_per_run_kb",
            1e-3,
            1,
        ),
        (r"([\d.]+) programs were in flight", "after.in_flight.programs_in_flight_mean", 1, 1),
        (
            r"\(([\d.]+) (?:before|with the previous revision)",
            "before.in_flight.programs_in_flight_mean",
            1,
            1,
        ),
    )
] + [
    (
        "docs/benchmarks.md",
        r"\*\*(\d+) KB\*\* \(64 runs\)",
        INFLIGHT,
        "after.memory.0.helper_pss_per_run_kb",
        1,
        0,
    ),
    (
        "docs/benchmarks.md",
        r"\*\*([\d.]+)\*\* of 64 in flight",
        INFLIGHT,
        "after.in_flight.programs_in_flight_mean",
        1,
        1,
    ),
    (
        "docs/benchmarks.md",
        r"\| ([\d.]+) MB \| \*\*\d+ KB\*\* \| <= 2 MB \|",
        INFLIGHT,
        "before.memory.0.helper_pss_per_run_kb",
        1e-3,
        1,
    ),
    (
        "docs/benchmarks.md",
        r"\*\*mean ([\d.]+)\*\* of 64",
        INFLIGHT,
        "after.in_flight.programs_in_flight_mean",
        1,
        1,
    ),
]


@pytest.mark.parametrize(("page", "pattern", "file", "path", "scale", "digits"), CLAIMS)
def test_the_pages_figures_are_the_measured_ones(page, pattern, file, path, scale, digits):
    text = " ".join((ROOT / page).read_text().split())  # line breaks as spaces
    found = [next(g for g in m.groups() if g) for m in re.finditer(pattern, text)]
    assert len(found) == 1, f"{page}: {pattern!r} found {len(found)} times"
    expected = round(_value(file, path) * scale, digits)
    assert float(found[0]) == pytest.approx(expected), (
        f"{page} says {found[0]} where docs/benchmarks/{file} ({path}) says {expected}"
    )


def test_one_python_version_everywhere():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    need = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    minimum = need.removeprefix(">=")
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for page in pages:
        if page.name == "benchmarks.md":  # says which Python it measured on, not what is needed
            continue
        for m in re.finditer(r"Python (3\.\d+)( or newer)?", page.read_text()):
            assert m.group(0) == f"Python {minimum} or newer", f"{page.name}: {m.group(0)!r}"


def test_the_quickstarts_example_summary_is_what_the_code_prints():
    text = (ROOT / "docs" / "quickstart.md").read_text()
    block = next(
        b
        for b in re.findall(r"^```[a-z]*\n(.*?)^```", text, re.S | re.M)
        if "online study summary" in b
    )
    rows = {}
    for line in block.splitlines():
        m = re.match(r"\s*(\S(?:.*?\S)?)\s{2,}(\S.*)", line)
        if m and not line.startswith("-"):
            rows[m.group(1)] = m.group(2)
    num = lambda key: int(rows[key].split()[0])  # noqa: E731
    val = re.match(r"mean (\S+), p95 (\S+), max (\S+)", rows["validation error"]).groups()
    runs, step = re.match(r"(\d+) validation runs at step (\d+)", rows["of"]).groups()
    summary = {
        "runs_launched": num("runs launched"),
        "runs_completed": num("runs completed"),
        "runs_failed": num("runs failed"),
        "runs_stopped": num("runs stopped in flight"),
        "samples_streamed": num("samples streamed"),
        "samples_served": num("samples served"),
        "mean_reuse": float(rows["mean reuse per sample"]),
        "val_runs": int(runs),
        "val_step": int(step),
        "val_error_mean": float(val[0]),
        "val_error_p95": float(val[1]),
        "val_error_max": float(val[2]),
    }
    assert format_summary(summary).strip() == block.strip()
    # its figures agree with each other (FIFO or Reservoir: served / distinct served)
    assert summary["runs_launched"] == (
        summary["runs_completed"] + summary["runs_failed"] + summary["runs_stopped"]
    )
    assert summary["mean_reuse"] >= 1.0 and summary["samples_served"] >= summary["samples_streamed"]
