"""Training and validation loss curves as a self-contained SVG file.

The plot is written beside ``metrics.jsonl`` after every evaluation, so a browser shows the curves of
a running job without extra dependencies. It is built from plain SVG elements: a plotting library
would be a heavy dependency for two axes and a few lines.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from xml.sax.saxutils import escape

WIDTH, HEIGHT = 720, 420
LEFT, RIGHT, TOP, BOTTOM = 60, 150, 20, 40
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]


def read_series(metrics_path: Path) -> dict[str, list[tuple[int, float]]]:
    """Collect ``loss`` and every ``val_loss*`` series from a metrics file, one value per step.

    A resumed run logs some steps twice; the later record wins.
    """
    series: dict[str, dict[int, float]] = {}
    for line in metrics_path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        for key, value in record.items():
            if (key == "loss" or key.startswith("val_loss")) and isinstance(value, (int, float)):
                if math.isfinite(value):
                    series.setdefault(key, {})[record["step"]] = float(value)
    return {name: sorted(points.items()) for name, points in sorted(series.items())}


def write_loss_plot(metrics_path: Path, svg_path: Path) -> None:
    """Draw every loss series of ``metrics_path`` into ``svg_path``."""
    series = read_series(metrics_path)
    points = [point for values in series.values() for point in values]
    if not points:
        return
    max_step = max(max(step for step, _ in points), 1)
    low = min(value for _, value in points)
    high = max(value for _, value in points)
    if high - low < 1e-9:
        low, high = low - 0.5, high + 0.5

    def x(step: float) -> float:
        return LEFT + (WIDTH - LEFT - RIGHT) * step / max_step

    def y(value: float) -> float:
        return TOP + (HEIGHT - TOP - BOTTOM) * (high - value) / (high - low)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        'font-family="sans-serif" font-size="12">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<line x1="{LEFT}" y1="{HEIGHT - BOTTOM}" x2="{WIDTH - RIGHT}" y2="{HEIGHT - BOTTOM}" stroke="black"/>',
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{HEIGHT - BOTTOM}" stroke="black"/>',
        f'<text x="{(LEFT + WIDTH - RIGHT) / 2}" y="{HEIGHT - 8}" text-anchor="middle">step</text>',
    ]
    for tick in range(5):
        value = low + (high - low) * tick / 4
        step = max_step * tick / 4
        parts.append(f'<text x="{LEFT - 6}" y="{y(value) + 4:.1f}" text-anchor="end">{value:.2f}</text>')
        parts.append(f'<text x="{x(step):.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle">{step:.0f}</text>')
    for index, (name, values) in enumerate(series.items()):
        color = COLORS[index % len(COLORS)]
        coordinates = " ".join(f"{x(step):.1f},{y(value):.1f}" for step, value in values)
        parts.append(f'<polyline points="{coordinates}" fill="none" stroke="{color}" stroke-width="1.5"/>')
        legend_y = TOP + 16 * index + 8
        parts.append(
            f'<line x1="{WIDTH - RIGHT + 12}" y1="{legend_y}" x2="{WIDTH - RIGHT + 32}" y2="{legend_y}" '
            f'stroke="{color}" stroke-width="2"/>'
        )
        parts.append(f'<text x="{WIDTH - RIGHT + 38}" y="{legend_y + 4}">{escape(name)}</text>')
    parts.append("</svg>")
    tmp = svg_path.with_name(svg_path.name + ".tmp")
    tmp.write_text("\n".join(parts) + "\n", encoding="utf-8")
    tmp.replace(svg_path)
