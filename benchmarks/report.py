"""Summaries (median, min-max, ratios vs upstream), the markdown table, the chart."""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.scenarios import Metric, RunResult, Scenario

LABELS = {
    "project": "project",
    "upstream": "upstream 1.4.6",
    "floor": "floor",
    "smtp-sink": "smtp-sink (C)",
}


@dataclass(frozen=True)
class Stat:
    median: float
    low: float
    high: float
    n: int
    failures: int


@dataclass(frozen=True)
class Row:
    scenario: Scenario
    metric: Metric
    stats: dict[str, Stat | None]
    """Per kind; None when the kind did not run or every run failed."""
    clients: list[str]
    reference: float | None = None
    """Project's median of this metric in ``metric.relative_to``, this run."""

    def ratio(self, kind: str) -> float | None:
        mine, base = self.stats.get(kind), self.stats.get("upstream")
        if mine is None or base is None or base.median == 0:
            return None
        return mine.median / base.median

    def meets_target(self) -> bool | None:
        """Every goal of the row met (None: no goal, or nothing to judge)."""
        metric = self.metric
        project = self.stats.get("project")
        value = project.median if project is not None and project.n else None
        verdicts = []
        ratio = self.ratio("project")
        if ratio is not None and metric.target is not None:
            verdicts.append(_better(ratio, metric.target, metric.higher_is_better, False))
        if value is not None and metric.limit is not None:
            verdicts.append(_better(value, metric.limit, metric.higher_is_better, metric.strict))
        if value is not None and self.reference is not None:
            goal = metric.share * self.reference
            verdicts.append(_better(value, goal, metric.higher_is_better, False))
        return all(verdicts) if verdicts else None


def _better(value: float, goal: float, higher_is_better: bool, strict: bool) -> bool:
    if higher_is_better:
        return value > goal if strict else value >= goal
    return value < goal if strict else value <= goal


def summarise(scenarios: list[Scenario], kinds: list[str], runs: list[RunResult]) -> list[Row]:
    rows = []
    for scenario in scenarios:
        mine = [r for r in runs if r.scenario == scenario.name]
        clients = sorted({r.client for r in mine if r.ok and r.client})
        for metric in scenario.metrics:
            stats: dict[str, Stat | None] = {}
            for kind in kinds:
                of_kind = [r for r in mine if r.kind == kind]
                values = [r.metrics[metric.key] for r in of_kind if r.ok]
                failures = sum(1 for r in of_kind if not r.ok)
                stats[kind] = (
                    Stat(statistics.median(values), min(values), max(values), len(values), failures)
                    if values
                    else (Stat(0.0, 0.0, 0.0, 0, failures) if failures else None)
                )
            rows.append(Row(scenario, metric, stats, clients))
    # Goals against another scenario's row of the same run.
    for i, row in enumerate(rows):
        if row.metric.relative_to is None:
            continue
        for other in rows:
            if (other.scenario.name, other.metric.key) == (row.metric.relative_to, row.metric.key):
                stat = other.stats.get("project")
                if stat is not None and stat.n:
                    rows[i] = dataclasses.replace(row, reference=stat.median)
    return rows


def _number(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _cell(stat: Stat | None) -> str:
    if stat is None:
        return "-"
    if stat.n == 0:
        return f"failed ({stat.failures}x)"
    text = f"{_number(stat.median)} ({_number(stat.low)}-{_number(stat.high)})"
    if stat.failures:
        text += f" [{stat.failures} failed]"
    return text


def _ratio(value: float | None) -> str:
    if value is None:
        return "-"
    # Two significant digits below 0.1 (a flood RTT can be 1/300 of upstream's).
    return f"{value:.2g}x" if value < 0.1 else f"{value:.2f}x"


def _metric_name(metric: Metric) -> str:
    if metric.label == metric.unit:
        return metric.label
    return f"{metric.label} ({metric.unit})"


def _target(row: Row) -> str:
    """The row's goals: a ratio to upstream, a bound for project's own
    figure, or a share of project's figure in another scenario."""
    metric = row.metric
    at_least = ">" if metric.strict else ">="
    at_most = "<" if metric.strict else "<="
    goals = []
    if metric.target is not None:
        goals.append(f"{'>=' if metric.higher_is_better else '<='} {metric.target:g}x")
    if metric.limit is not None:
        op = at_least if metric.higher_is_better else at_most
        goals.append(f"project {op} {metric.limit:g} {metric.unit}")
    if metric.relative_to is not None:
        goal = f"project {'>=' if metric.higher_is_better else '<='} {metric.share:g}x project's"
        goal += f" {metric.relative_to}"
        if row.reference is None:
            goal += " (not run)"
        else:
            goal += f" ({_number(metric.share * row.reference)})"
        goals.append(goal)
    return "; ".join(goals) or "-"


def markdown_table(rows: list[Row], kinds: list[str]) -> str:
    head = ["scenario", "metric"] + [LABELS.get(k, k) for k in kinds]
    head += ["project / upstream", "target", "floor / upstream"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        verdict = row.meets_target()
        mark = "" if verdict is None else (" ok" if verdict else " MISSED")
        cells = [row.scenario.name, _metric_name(row.metric)]
        cells += [_cell(row.stats.get(k)) for k in kinds]
        cells += [
            _ratio(row.ratio("project")) + mark,
            _target(row),
            _ratio(row.ratio("floor")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def rst_table(rows: list[Row], kinds: list[str]) -> str:
    """The same table as an RST list-table, for docs/performance.rst."""
    head = ["Scenario", "Metric"] + [LABELS.get(k, k) for k in kinds]
    head += ["project / upstream", "target", "floor / upstream"]
    out = [".. list-table::", "   :header-rows: 1", ""]
    body = [head]
    for row in rows:
        body.append(
            [row.scenario.name, _metric_name(row.metric)]
            + [_cell(row.stats.get(k)) for k in kinds]
            + [_ratio(row.ratio("project")), _target(row), _ratio(row.ratio("floor"))]
        )
    for cells in body:
        out.append("   * - " + cells[0])
        out.extend("     - " + c for c in cells[1:])
    return "\n".join(out)


def rows_as_json(rows: list[Row]) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        out.append(
            {
                "scenario": row.scenario.name,
                "metric": row.metric.key,
                "unit": row.metric.unit,
                "higher_is_better": row.metric.higher_is_better,
                "target_ratio": row.metric.target,
                "target_project": _target(row),
                "limit": row.metric.limit,
                "relative_to": row.metric.relative_to,
                "share": row.metric.share if row.metric.relative_to else None,
                "reference": row.reference,
                "clients": row.clients,
                "kinds": {kind: None if s is None else s.__dict__ for kind, s in row.stats.items()},
                "ratio_project_upstream": row.ratio("project"),
                "ratio_floor_upstream": row.ratio("floor"),
                "ratio_smtp_sink_upstream": row.ratio("smtp-sink"),
                "meets_target": row.meets_target(),
            }
        )
    return out


def chart(rows: list[Row], kinds: list[str], path: Path, title: str) -> str | None:
    """Draw 'times better than upstream' per metric; return None or why not."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib): chart skipped"
    shown = [k for k in kinds if k != "upstream"]
    colours = {"project": "#2a7ab9", "floor": "#9a9a9a", "smtp-sink": "#d98c1f"}
    usable = [r for r in rows if r.ratio("project") or r.ratio("floor")]
    if not usable:
        return "no upstream results: chart skipped"
    fig, ax = plt.subplots(figsize=(10, 1.3 + 0.75 * len(usable)))
    height = 0.8 / max(len(shown), 1)
    floor_x = 0.2  # worse than 5x below upstream is drawn at the edge
    labels = []
    top = 2.0
    for i, row in enumerate(usable):
        better = "higher" if row.metric.higher_is_better else "lower"
        labels.append(f"{row.scenario.name}\n{row.metric.label} ({better} is better)")
        for j, kind in enumerate(shown):
            ratio = row.ratio(kind)
            if ratio is None or ratio <= 0:
                continue
            gain = ratio if row.metric.higher_is_better else 1 / ratio
            shown_gain = max(gain, floor_x)
            top = max(top, gain)
            y = i + (j - (len(shown) - 1) / 2) * height
            # Bars grow from upstream (1x): right is better, left is worse.
            # Every bar is labelled; the legend drops duplicates below.
            ax.barh(
                y,
                shown_gain - 1,
                left=1,
                height=height * 0.9,
                color=colours.get(kind, "#555"),
                label=LABELS.get(kind, kind),
            )
            text_x = shown_gain * 1.04 if gain >= 1 else 1.04
            ax.text(
                text_x, y, f"{gain:.2g}x" if gain < 1 else f"{gain:.1f}x", va="center", fontsize=8
            )
        if row.metric.target is not None:
            goal = row.metric.target if row.metric.higher_is_better else 1 / row.metric.target
            top = max(top, goal)
            ax.plot(
                [goal, goal],
                [i - 0.45, i + 0.45],
                color="#c0392b",
                linewidth=2,
                label="target (project)",
            )
    ax.axvline(1.0, color="black", linewidth=1, label="upstream 1.4.6 = 1x")
    ax.set_xscale("log")
    ax.set_xlim(floor_x * 0.9, top * 1.6)
    ax.set_yticks(range(len(usable)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("times better than upstream aiosmtpd 1.4.6 (ratio of medians, log scale)")
    ax.set_title(title, fontsize=10)
    handles, names = ax.get_legend_handles_labels()
    unique = dict(zip(names, handles))
    ax.legend(
        unique.values(),
        unique.keys(),
        loc="upper center",
        fontsize=8,
        bbox_to_anchor=(0.45, -0.09),
        ncol=len(unique),
        frameon=False,
    )
    ax.grid(axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
