"""Geometry of the lock timeline (an SVG Gantt chart drawn by a template)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from orchestrator.dashboard.selectors.timeline import Gantt

LABEL_WIDTH = 180
CHART_WIDTH = 900
ROW_HEIGHT = 26
AXIS_HEIGHT = 24
TICKS = 6


@dataclass
class BarBox:
    x: float
    width: float
    css: str
    title: str


@dataclass
class RowBox:
    y: float
    label: str
    bars: list[BarBox]


@dataclass
class Tick:
    x: float
    label: str


@dataclass
class Chart:
    width: int
    height: int
    label_width: int
    rows: list[RowBox]
    ticks: list[Tick]


def _x(moment: datetime, gantt: Gantt) -> float:
    span = (gantt.end - gantt.start).total_seconds() or 1.0
    return LABEL_WIDTH + CHART_WIDTH * (moment - gantt.start).total_seconds() / span


def gantt_chart(gantt: Gantt) -> Chart:
    """Boxes in pixels: one row per agent, one bar per hold (at least 2 px wide)."""
    rows = []
    for index, (agent_name, bars) in enumerate(gantt.rows):
        boxes = []
        for bar in bars:
            x = _x(bar.start, gantt)
            end = "live" if bar.live else (bar.lock.end or "released")
            boxes.append(
                BarBox(
                    x=round(x, 1),
                    width=round(max(2.0, _x(bar.end, gantt) - x), 1),
                    css=f"bar mode-{bar.lock.mode} end-{end}",
                    title=(
                        f"{agent_name}: {bar.lock.mode}, fence {bar.lock.token}, "
                        f"{bar.lock.acquired_at:%H:%M:%S} to "
                        + ("now (live)" if bar.live else f"{bar.end:%H:%M:%S} ({end})")
                    ),
                )
            )
        rows.append(RowBox(y=AXIS_HEIGHT + index * ROW_HEIGHT, label=agent_name, bars=boxes))
    span = gantt.end - gantt.start
    ticks = [
        Tick(
            x=round(LABEL_WIDTH + CHART_WIDTH * i / TICKS, 1),
            label=f"{gantt.start + span * i / TICKS:%H:%M:%S}",
        )
        for i in range(TICKS + 1)
    ]
    return Chart(
        width=LABEL_WIDTH + CHART_WIDTH + 40,
        height=AXIS_HEIGHT + max(1, len(rows)) * ROW_HEIGHT + 8,
        label_width=LABEL_WIDTH,
        rows=rows,
        ticks=ticks,
    )
