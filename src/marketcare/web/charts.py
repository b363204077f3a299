"""Charts drawn on the server as SVG: no script, no chart library, printable, and allowed
by a strict content security policy (presentation attributes, no inline styles)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from markupsafe import Markup


@dataclass(frozen=True)
class Series:
    """One line: a value 0..100 (or None: no point) per x label."""

    name: str
    values: Sequence[float | None]
    css: str  # the class that colours it (static/app.css)


def line_chart(
    labels: Sequence[str],
    series: Sequence[Series],
    *,
    title: str,
    width: int = 640,
    height: int = 220,
) -> Markup:
    """A line chart of percentages with the labels (weeks) on the x-axis and a legend."""
    left, right, top, bottom = 34, 10, 10, 46
    plot_w, plot_h = width - left - right, height - top - bottom
    n = max(len(labels), 1)

    def x(i: int) -> float:
        return left + (plot_w * (i + 0.5) / n)

    def y(v: float) -> float:
        return top + plot_h * (1 - max(0.0, min(100.0, v)) / 100)

    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
    ]
    for tick in (0, 25, 50, 75, 100):
        parts.append(
            f'<line class="grid" x1="{left}" x2="{width - right}" y1="{y(tick):.1f}" y2="{y(tick):.1f}"/>'
            f'<text class="axis" x="{left - 4}" y="{y(tick) + 3:.1f}" text-anchor="end">{tick}</text>'
        )
    for i, label in enumerate(labels):
        parts.append(
            f'<text class="axis" x="{x(i):.1f}" y="{top + plot_h + 14}" text-anchor="middle">'
            f"{escape(label)}</text>"
        )
    for s in series:
        points = [(x(i), y(v), v) for i, v in enumerate(s.values) if v is not None]
        if len(points) > 1:
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py, _ in points)
            parts.append(f'<polyline class="line {s.css}" fill="none" points="{path}"/>')
        for px, py, v in points:
            parts.append(
                f'<circle class="dot {s.css}" cx="{px:.1f}" cy="{py:.1f}" r="3">'
                f"<title>{escape(s.name)}: {v:.1f}</title></circle>"
            )
    lx = left
    for s in series:
        parts.append(
            f'<rect class="key {s.css}" x="{lx}" y="{height - 14}" width="10" height="10"/>'
            f'<text class="legend" x="{lx + 14}" y="{height - 5}">{escape(s.name)}</text>'
        )
        lx += 14 + 13 * len(s.name) + 18
    parts.append("</svg>")
    # every text put in is escape()d and every number formatted (bandit B704 accepted)
    return Markup("".join(parts))  # nosec B704


def bar_chart(bars: Sequence[tuple[str, float | None]], *, title: str, width: int = 640) -> Markup:
    """Horizontal bars (a ranking's scores, 0..100), best first as given."""
    row, left, right = 22, 130, 50
    height = row * max(len(bars), 1) + 8
    plot_w = width - left - right
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
    ]
    for i, (label, value) in enumerate(bars):
        top = 4 + i * row
        parts.append(
            f'<text class="axis" x="{left - 6}" y="{top + 14}" text-anchor="end">{escape(label)}</text>'
        )
        if value is None:
            parts.append(f'<text class="axis" x="{left + 4}" y="{top + 14}">—</text>')
            continue
        w = plot_w * max(0.0, min(100.0, value)) / 100
        css = "good" if value >= 80 else "fair" if value >= 60 else "poor"
        parts.append(
            f'<rect class="bar {css}" x="{left}" y="{top + 3}" width="{w:.1f}" height="{row - 8}"/>'
            f'<text class="axis" x="{left + w + 4:.1f}" y="{top + 14}">{value:.1f}</text>'
        )
    parts.append("</svg>")
    # every text put in is escape()d and every number formatted (bandit B704 accepted)
    return Markup("".join(parts))  # nosec B704
