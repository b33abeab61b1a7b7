"""The benchmark report: scripts record their figures here, ``make bench`` aggregates them.

Each bench script builds a :class:`Recorder` and, at the end of its main, records its main figures
(median, p99 and N of the samples, the baseline measured in the same run and the ratio to it) and
calls :meth:`Recorder.save`, which writes ``bench/results/<script>[-<variant>].json``. ``python
bench/report.py`` reads every such file and writes ``bench/results/REPORT.md`` and ``REPORT.json``
with the machine the figures came from. Absolute times are noisy on a shared 2-core machine: the
ratio to the same run's baseline is the figure to compare.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULTS = Path(os.environ.get("SESSIONKIT_BENCH_RESULTS", Path(__file__).resolve().parent / "results"))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """Where and when the figures were taken (the load average says how quiet the machine was)."""
    return {
        "cores": os.cpu_count(),
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Figure:
    name: str
    unit: str
    median: float
    p99: float | None
    n: int
    baseline: str | None = None
    baseline_median: float | None = None
    ratio: float | None = None
    note: str = ""


@dataclass
class Recorder:
    """The figures of one script run; ``variant`` separates runs of one script (e.g. sqlite, postgres)."""

    script: str
    variant: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    figures: list[Figure] = field(default_factory=list)

    def samples(
        self,
        name: str,
        values: Sequence[float],
        *,
        unit: str = "ms",
        baseline: str | None = None,
        note: str = "",
    ) -> Figure:
        """Record a figure from its samples; ``baseline`` names an already recorded figure of this run."""
        if not values:
            raise ValueError(f"figure {name!r} has no samples")
        return self.value(
            name,
            statistics.median(values),
            n=len(values),
            p99=percentile(values, 0.99),
            unit=unit,
            baseline=baseline,
            note=note,
        )

    def value(
        self,
        name: str,
        median: float,
        *,
        n: int,
        p99: float | None = None,
        unit: str = "ms",
        baseline: str | None = None,
        baseline_median: float | None = None,
        note: str = "",
    ) -> Figure:
        """Record a figure already reduced (a rate, a score, a single timing)."""
        if baseline is not None and baseline_median is None:
            base = next((f for f in self.figures if f.name == baseline), None)
            if base is None:
                raise ValueError(f"baseline {baseline!r} of {name!r} is not recorded yet")
            baseline_median = base.median
        ratio = median / baseline_median if baseline_median else None
        figure = Figure(name, unit, median, p99, n, baseline, baseline_median, ratio, note)
        self.figures.append(figure)
        return figure

    def save(self) -> Path:
        RESULTS.mkdir(parents=True, exist_ok=True)
        stem = f"{self.script}-{self.variant}" if self.variant else self.script
        path = RESULTS / f"{stem}.json"
        payload = {
            "script": self.script,
            "variant": self.variant,
            "config": self.config,
            "machine": machine(),
            "figures": [asdict(f) for f in self.figures],
        }
        path.write_text(json.dumps(payload, indent=1, default=str) + "\n")
        return path


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if unit == "x" or abs(value) >= 100:
        return f"{value:.0f}" if abs(value) >= 100 else f"{value:.2f}"
    return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"


def load(results: Path) -> list[dict[str, Any]]:
    runs = []
    for path in sorted(results.glob("*.json")):
        if path.name == "REPORT.json":
            continue
        try:
            run = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            print(f"skipped {path.name}: {e}", file=sys.stderr)
            continue
        if isinstance(run, dict) and "figures" in run:
            runs.append(run)
    return runs


def aggregate(results: Path = RESULTS) -> tuple[Path, Path]:
    """Write REPORT.json (every run as recorded) and REPORT.md (one table per run) from results/."""
    runs = load(results)
    generated, m = time.strftime("%Y-%m-%d %H:%M:%S %Z"), machine()
    json_path = results / "REPORT.json"
    json_path.write_text(json.dumps({"generated": generated, "machine": m, "runs": runs}, indent=1) + "\n")
    lines = [
        "# sessionkit benchmark report",
        "",
        f"Generated {generated} on {m['cores']} cores ({m['cpu']}), Python {m['python']}, "
        f"{m['platform']}. Reproduce: `make bench` (full) or `make bench-quick` (bounded subset).",
        "",
        "Every figure: median and p99 of N samples, and its ratio to the baseline measured in the same "
        "run (ratios are the comparable figures; absolute times move with the machine's load).",
    ]
    for run in runs:
        title = run["script"] + (f" ({run['variant']})" if run.get("variant") else "")
        rm = run.get("machine", {})
        lines += [
            "",
            f"## {title}",
            "",
            f"Run {rm.get('time', '?')}, load average {rm.get('load_average', '?')}"
            + (f"; config {json.dumps(run['config'])}" if run.get("config") else ""),
            "",
            "| figure | median | p99 | N | unit | baseline | ratio | note |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for f in run["figures"]:
            ratio = _fmt(f["ratio"], "x") + "x" if f["ratio"] is not None else "-"
            lines.append(
                f"| {f['name']} | {_fmt(f['median'])} | {_fmt(f['p99'])} | {f['n']} | {f['unit']} | "
                f"{f['baseline'] or '-'} | {ratio} | "
                f"{f.get('note', '')} |"
            )
    md_path = results / "REPORT.md"
    md_path.write_text("\n".join(lines) + "\n")
    return md_path, json_path


def main() -> None:
    parser = argparse.ArgumentParser(description="Aggregate bench/results/*.json into REPORT.md/json")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--clean", action="store_true", help="delete the recorded figures instead")
    args = parser.parse_args()
    if args.clean:
        for pattern in ("*.json", "*.md", "*.json.txt"):  # the figures, the reports, raw samples
            for path in args.results.glob(pattern):
                path.unlink()
        return
    args.results.mkdir(parents=True, exist_ok=True)
    md, js = aggregate(args.results)
    print(f"wrote {md} and {js}")


if __name__ == "__main__":
    main()
