"""Bar charts of the bench figures (matplotlib, written as PNG for docs/benchmarks.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def grouped_bars(
    path: Path,
    *,
    title: str,
    groups: list[str],
    series: dict[str, list[float]],
    ratios: list[float],
    ratio_label: str,
    target: float | list[float],
    unit: str,
) -> None:
    """One group of bars per measurement, and the ratio (ours / baseline) above each
    group, drawn against its target."""
    import matplotlib

    matplotlib.use("Agg")  # no display: write files only
    import matplotlib.pyplot as plt

    width = 0.8 / len(series)
    figure, axes = plt.subplots(figsize=(10, 4.8), dpi=110)
    for i, (name, values) in enumerate(series.items()):
        positions = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        axes.bar(positions, values, width, label=name)
    tops = [max(values[g] for values in series.values()) for g in range(len(groups))]
    targets = target if isinstance(target, list) else [target] * len(ratios)
    for g, ratio in enumerate(ratios):
        colour = "tab:green" if ratio >= targets[g] else "tab:red"
        axes.annotate(
            f"{ratio:.2f}",
            (g, tops[g]),
            textcoords="offset points",
            xytext=(0, 4),
            ha="center",
            color=colour,
            fontweight="bold",
        )
    axes.set_xticks(range(len(groups)), groups, fontsize=8)
    axes.set_ylabel(unit)
    goal = " / ".join(f"{t:g}" for t in dict.fromkeys(targets))
    axes.set_title(f"{title}\n(numbers: {ratio_label}; targets {goal}, red below)")
    axes.legend(fontsize=8)
    axes.margins(y=0.15)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)


def limit_panels(path: Path, *, title: str, panels: list[dict[str, Any]]) -> None:
    """Side-by-side bar charts of figures where lower is better (times, latencies).

    Each panel is a dict with ``title``, ``groups`` (labels), ``series`` ({name:
    values per group}), ``limits`` (the target of each group, or None) and
    ``checked`` (the series compared with the limits): a dashed line marks each
    group's limit, and the checked value is written above it, red when over.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display: write files only
    import matplotlib.pyplot as plt

    figure, axes_row = plt.subplots(
        1, len(panels), figsize=(6 * len(panels), 4.8), dpi=110, squeeze=False
    )
    for axes, panel in zip(axes_row[0], panels, strict=True):
        series, groups = panel["series"], panel["groups"]
        width = 0.8 / len(series)
        for i, (name, values) in enumerate(series.items()):
            positions = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
            axes.bar(positions, values, width, label=name)
        checked = series[panel["checked"]]
        for g, limit in enumerate(panel["limits"]):
            top = max(values[g] for values in series.values())
            if limit is not None:
                axes.hlines(limit, g - 0.45, g + 0.45, colors="black", linestyles="dashed")
            over = limit is not None and checked[g] > limit
            axes.annotate(
                f"{checked[g]:.0f}",
                (g, max(top, limit or 0)),
                textcoords="offset points",
                xytext=(0, 4),
                ha="center",
                color="tab:red" if over else ("tab:green" if limit is not None else "black"),
                fontweight="bold",
            )
        axes.set_xticks(range(len(groups)), groups, fontsize=7)
        axes.set_title(f"{panel['title']}\n(numbers: {panel['checked']}; dashed: target)")
        # Below the plot: inside, it hid the numbers of the first groups.
        axes.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=len(series))
        axes.margins(y=0.15)
    figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
