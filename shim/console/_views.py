"""What the console's pages show, computed from what the store and the engine hand in: form
values read, times and ages worded, the migration chart laid out. Pure (no I/O, no clock)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta

from shim.core import iso_from_us, parse_time_us

_NUMBER = re.compile(r"^\+[0-9]{4,15}$")
_DIGITS = re.compile(r"^[0-9]{10,15}$")
_LOCAL_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2})?$")


def read_query(q: str) -> tuple[str, str]:
    """A search box's text: ``("number", "+1…")`` for a phone number (E.164; bare digits get
    their ``+``), else ``("id", text)`` for a message id."""
    q = q.strip()
    compact = re.sub(r"[\s().-]", "", q)
    if _NUMBER.match(compact):
        return "number", compact
    if _DIGITS.match(compact):
        return "number", "+" + compact
    return "id", q


def read_time(value: str) -> int | None:
    """A time field (``datetime-local`` gives ``2026-11-23T15:04`` with no zone: read as UTC, as the
    pages show every time in UTC), a date, or ISO-8601. None when empty; ``ValueError`` when bad."""
    value = value.strip()
    if not value:
        return None
    if _LOCAL_TIME.match(value):
        value += ("" if value.count(":") == 2 else ":00") + "Z"
    us = parse_time_us(value)
    if us is None:
        raise ValueError(f"{value!r} is not a time (use 2026-11-23T15:04 in UTC, or a date)")
    return us


def show_time(us: int | None) -> str:
    return iso_from_us(us).replace("T", " ").removesuffix("Z") if us is not None else "—"


def ago(delta_us: int) -> str:
    """A duration in the unit an operator reads at a glance."""
    s = max(0, delta_us) / 1_000_000
    if s < 1:
        return f"{round(s * 1000)} ms"
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 172_800:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def per_second(count: int, window_s: float) -> str:
    return f"{count / window_s:.1f}/s" if window_s > 0 else "—"


@dataclass(frozen=True)
class Bar:
    day: str
    x: float
    width: float
    v1_y: float
    v1_h: float
    native_y: float
    native_h: float
    v1: int
    native: int


@dataclass(frozen=True)
class Chart:
    """A stacked bar per day (v1 sends below, native v2 sends above), in SVG user units."""

    width: int
    height: int
    peak: int
    bars: list[Bar] = field(default_factory=list)
    first_day: str = ""
    last_day: str = ""


def days_back(today: date, n: int) -> list[str]:
    return [(today - timedelta(days=n - 1 - i)).isoformat() for i in range(n)]


def usage_chart(days: Sequence[str], daily: Iterable[tuple[str, str, int]], width: int = 480,
                height: int = 110) -> Chart:
    """``daily``: (day, feature, count) rows of one user; only ``v1:message`` and
    ``native:message`` are drawn. Days with no row are drawn empty, so gaps show."""
    v1 = dict.fromkeys(days, 0)
    native = dict.fromkeys(days, 0)
    for day, feature, count in daily:
        if day in v1:
            if feature == "v1:message":
                v1[day] += count
            elif feature == "native:message":
                native[day] += count
    peak = max((v1[d] + native[d] for d in days), default=0)
    slot = width / max(1, len(days))
    bars = []
    for i, d in enumerate(days):
        scale = (height / peak) if peak else 0.0
        v1_h = v1[d] * scale
        native_h = native[d] * scale
        bars.append(Bar(day=d, x=round(i * slot + slot * 0.1, 2), width=round(slot * 0.8, 2),
                        v1_y=round(height - v1_h, 2), v1_h=round(v1_h, 2),
                        native_y=round(height - v1_h - native_h, 2), native_h=round(native_h, 2),
                        v1=v1[d], native=native[d]))
    return Chart(width=width, height=height, peak=peak, bars=bars,
                 first_day=days[0] if days else "", last_day=days[-1] if days else "")


def share(native: int, v1: int) -> str:
    total = native + v1
    return f"{100 * native / total:.1f}%" if total else "—"
