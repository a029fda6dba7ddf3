"""Geometry of the lock timeline (an SVG Gantt chart drawn by a template).

One row per agent, one bar per hold, and a thinner amber bar per wait for the
resource picked. For a path (core/paths.py) the chart has a section per resource:
the one picked, then each folder above it (its holds are marked *via* the folder:
they covered the path), or for a folder each path under it; each section starts
with a header row naming its resource and how it relates to the one picked.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from orchestrator.dashboard.selectors.timeline import ABOVE, SELF, UNDER, Gantt, Row, Section

LABEL_WIDTH = 180
CHART_WIDTH = 900
ROW_HEIGHT = 26
AXIS_HEIGHT = 24
TICKS = 6
LABEL_CHARS = 28
BAR = (4, 18)  # a hold's offset in its row and its height
WAIT = (9, 8)  # a wait's: thinner, so that a wait then its hold read as one line


@dataclass
class BarBox:
    x: float
    width: float
    css: str
    title: str
    dy: int = BAR[0]
    height: int = BAR[1]


@dataclass
class RowBox:
    y: float
    label: str
    bars: list[BarBox]
    header: bool = False
    title: str = ""  # the whole label and what the row is
    indent: bool = False  # an agent's row under a section's header


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


def fit_label(text: str, limit: int = LABEL_CHARS) -> str:
    """A path cut to ``limit`` characters from the left (its end says the most)."""
    return text if len(text) <= limit else "…" + text[-(limit - 1) :]


def fit_name(text: str, limit: int = LABEL_CHARS) -> str:
    """An agent's name cut to ``limit`` characters from the right."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _header(section: Section, subject: str) -> tuple[str, str]:
    """A section's header label and its explanation."""
    if section.relation == SELF:
        return section.name, f"{section.name}: the resource picked"
    if section.relation == ABOVE:
        return f"via {section.name}", f"{section.name}: a folder above, its locks cover {subject}"
    under = f"{section.name}: under {subject}"
    return section.name, f"{under}, its locks and the folder's keep each other out"


def _box(
    start: datetime, end: datetime, gantt: Gantt, css: str, title: str, shape: tuple = BAR
) -> BarBox:
    x = _x(start, gantt)
    width = max(2.0, _x(end, gantt) - x)
    return BarBox(round(x, 1), round(width, 1), css, title, dy=shape[0], height=shape[1])


def _bars(row: Row, section: Section, gantt: Gantt) -> list[BarBox]:
    on = "" if section.relation == SELF else f" on {section.name}"
    subject = gantt.subject.name
    why = {SELF: "", ABOVE: f" (covers {subject})", UNDER: f" (under {subject})"}
    boxes = []
    for bar in row.bars:
        end = "live" if bar.live else (bar.lock.end or "released")
        title = (
            f"{row.agent}: {bar.lock.mode}{on}{why[section.relation]}, "
            f"fence {bar.lock.token}, {bar.lock.acquired_at:%H:%M:%S} to "
            + ("now (live)" if bar.live else f"{bar.end:%H:%M:%S} ({end})")
        )
        css = f"bar mode-{bar.lock.mode} end-{end} rel-{section.relation}"
        boxes.append(_box(bar.start, bar.end, gantt, css, title))
    for wait in row.waits:
        status = "waiting" if wait.live else wait.request.status
        title = (
            f"{row.agent}: waited for {wait.request.mode}, "
            f"{wait.request.requested_at:%H:%M:%S} to "
            + ("now (still waiting)" if wait.live else f"{wait.end:%H:%M:%S} ({status})")
        )
        boxes.append(_box(wait.start, wait.end, gantt, f"wait status-{status}", title, WAIT))
    return boxes


def gantt_chart(gantt: Gantt) -> Chart:
    """Boxes in pixels: one row per agent and section, one bar per hold or wait (at
    least 2 px wide); a header row per section when the resource is a path."""
    headed = gantt.subject.is_path
    rows: list[RowBox] = []

    def add(label: str, bars: list[BarBox], *, header: bool = False, title: str = "") -> None:
        y = AXIS_HEIGHT + len(rows) * ROW_HEIGHT
        indent = headed and not header
        rows.append(RowBox(y, label, bars, header=header, title=title or label, indent=indent))

    for section in gantt.sections:
        if headed:
            label, title = _header(section, gantt.subject.name)
            add(fit_label(label), [], header=True, title=title)
            if not section.rows:
                add("(no holds in this window)", [])
        for row in section.rows:
            label = fit_name(row.agent, LABEL_CHARS - 2 if headed else LABEL_CHARS)
            add(label, _bars(row, section, gantt), title=row.agent)
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
