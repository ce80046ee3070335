"""The dashboard's chart: jobs finished per minute, as stacked SVG bars (the template draws
them from these numbers; no JavaScript, no chart library)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

# Stacked bottom to top in the chart.
CHART_STATUSES = ("succeeded", "failed", "cancelled")

# SVG user units; about the chart's width in CSS pixels on a desktop screen, so text keeps
# its size there.
CHART_WIDTH, CHART_LEFT, CHART_RIGHT, CHART_TOP, PLOT_HEIGHT = 1160.0, 34.0, 22.0, 10.0, 140.0
PLOT_BOTTOM = CHART_TOP + PLOT_HEIGHT


@dataclass(frozen=True)
class Segment:
    status: str
    count: int
    y: float
    height: float


@dataclass(frozen=True)
class Bar:
    minute: datetime
    x: float
    width: float
    total: int
    segments: list[Segment]


@dataclass(frozen=True)
class Chart:
    bars: list[Bar]
    top: int
    totals: dict[str, int]
    ticks: list[tuple[float, str]]
    width: float = CHART_WIDTH
    left: float = CHART_LEFT
    right: float = CHART_WIDTH - CHART_RIGHT
    plot_top: float = CHART_TOP
    plot_bottom: float = PLOT_BOTTOM

    @property
    def empty(self) -> bool:
        return not any(self.totals.values())


def axis_top(peak: int) -> int:
    """The y axis's top: the smallest of 4, 10, 20, 50, 100, 200, 500, ... at or above `peak`."""
    if peak <= 4:
        return 4
    magnitude = 10
    while True:
        for step in (1, 2, 5):
            if step * magnitude >= peak:
                return step * magnitude
        magnitude *= 10


def chart_of(buckets: list[tuple[datetime, dict[str, int]]]) -> Chart:
    """Stacked bars, one per minute, in SVG user units (the template draws them)."""
    top = axis_top(max((sum(counts.values()) for _, counts in buckets), default=0))
    slot = (CHART_WIDTH - CHART_LEFT - CHART_RIGHT) / max(len(buckets), 1)
    bars = [
        _bar(minute, counts, CHART_LEFT + index * slot, slot, top)
        for index, (minute, counts) in enumerate(buckets)
    ]
    ticks = [
        (bar.x + bar.width / 2, f"{bar.minute:%H:%M}")
        for bar in bars
        if bar.minute.minute % 10 == 0
    ]
    totals = {
        status: sum(counts.get(status, 0) for _, counts in buckets) for status in CHART_STATUSES
    }
    return Chart(bars=bars, top=top, totals=totals, ticks=ticks)


def _bar(minute: datetime, counts: Mapping[str, int], x: float, slot: float, top: int) -> Bar:
    y, segments = PLOT_BOTTOM, []
    for status in CHART_STATUSES:
        count = counts.get(status, 0)
        if count:
            height = count / top * PLOT_HEIGHT
            y -= height
            segments.append(Segment(status, count, round(y, 2), round(height, 2)))
    total = sum(counts.get(status, 0) for status in CHART_STATUSES)
    return Bar(minute, round(x + 1, 2), round(slot - 2, 2), total, segments)
