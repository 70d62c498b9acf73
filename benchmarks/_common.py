"""Helpers shared by the benchmark scripts: repeat, median and spread, tables, output files."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"


def repeat(fn: Callable[[], dict[str, float]], n: int) -> list[dict[str, float]]:
    return [fn() for _ in range(n)]


def summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def table(rows: list[list[Any]], header: list[str]) -> str:
    cells = [header] + [[f"{c:.4g}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "-|-".join("-" * w for w in widths))
    return "\n".join(lines)


def save(name: str, result: dict[str, Any], out: Path | None = None) -> Path:
    path = (out or OUT) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    return path


def save_bars(
    name: str,
    labels: list[str],
    values: list[float],
    ylabel: str,
    out: Path | None = None,
    title: str = "",
) -> Path | None:
    """A bar chart of the two (or more) sides of a comparison, as PNG (skipped without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(labels), 3.2))
    ax.bar(range(len(values)), values, color=["tab:blue", "tab:orange", "tab:green", "tab:red"])
    ax.set_xticks(range(len(values)), labels, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title or name, fontsize=9)
    fig.tight_layout()
    path = (out or OUT) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
