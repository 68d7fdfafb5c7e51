"""Instance masks and the JSONL's polygons, both ways: polygons rasterised into a mask for training,
a predicted mask traced back into polygons for prediction files (what `evaluate` reads).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw


def polygon_mask(polygons: Sequence[Sequence[float]], width: int, height: int) -> np.ndarray:
    """A uint8 HxW mask of normalised polygons (their union)."""
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for polygon in polygons:
        points = [(x * width, y * height) for x, y in zip(polygon[0::2], polygon[1::2])]
        draw.polygon(points, fill=1, outline=1)
    return np.asarray(canvas, dtype=np.uint8)


def mask_polygons(mask: np.ndarray, width: int, height: int, max_points: int | None = None) -> list[list[float]]:
    """The outlines of a boolean HxW mask's regions, as normalised flat x, y lists: each region's
    outer boundary along the pixel edges, straight runs merged into one segment. Holes are left
    out: the JSONL's polygons are a union, so a hole cannot be written as one. `max_points`
    (Azure's max_number_of_polygon_points): each polygon simplified to at most that many points."""
    mask = np.asarray(mask, dtype=bool)
    inside = np.pad(mask, 1)
    # Boundary edges between a pixel inside and its neighbour outside, directed so that the inside
    # is on the right (x right, y down): outer boundaries run clockwise on screen, holes the other way.
    ys, xs = np.nonzero(inside[1:-1, 1:-1] & ~inside[:-2, 1:-1])      # top edges, left to right
    edges = [((x, y), (x + 1, y)) for x, y in zip(xs.tolist(), ys.tolist())]
    ys, xs = np.nonzero(inside[1:-1, 1:-1] & ~inside[2:, 1:-1])       # bottom edges, right to left
    edges += [((x + 1, y + 1), (x, y + 1)) for x, y in zip(xs.tolist(), ys.tolist())]
    ys, xs = np.nonzero(inside[1:-1, 1:-1] & ~inside[1:-1, :-2])      # left edges, bottom to top
    edges += [((x, y + 1), (x, y)) for x, y in zip(xs.tolist(), ys.tolist())]
    ys, xs = np.nonzero(inside[1:-1, 1:-1] & ~inside[1:-1, 2:])       # right edges, top to bottom
    edges += [((x + 1, y), (x + 1, y + 1)) for x, y in zip(xs.tolist(), ys.tolist())]
    following: dict[tuple[int, int], list[tuple[int, int]]] = defaultdict(list)
    for start, end in edges:
        following[start].append(end)
    polygons = []
    while following:
        start = next(iter(following))
        loop = [start]
        point = start
        while True:
            ends = following[point]
            end = ends.pop()
            if not ends:
                del following[point]
            if end == start:
                break
            loop.append(end)
            point = end
        corners = _corners(loop)
        if len(corners) >= 3 and _signed_area(corners) > 0:  # clockwise on screen: an outer boundary
            if max_points is not None:
                corners = simplify(corners, max_points)
            polygons.append([v for x, y in corners for v in (x / width, y / height)])
    return polygons


def simplify(points: list[tuple[int, int]], max_points: int) -> list[tuple[int, int]]:
    """The polygon with at most `max_points` (3 or more) points: Visvalingam-Whyatt, dropping the
    point whose triangle with its neighbours has the least area, one at a time, so that the
    shape's salient corners stay."""
    kept = np.asarray(points, dtype=np.float64)
    while len(kept) > max(3, max_points):
        before, after = np.roll(kept, 1, axis=0), np.roll(kept, -1, axis=0)
        areas = np.abs((before[:, 0] - kept[:, 0]) * (after[:, 1] - kept[:, 1])
                       - (after[:, 0] - kept[:, 0]) * (before[:, 1] - kept[:, 1]))
        kept = np.delete(kept, int(np.argmin(areas)), axis=0)
    return [(int(x), int(y)) for x, y in kept]


def _corners(loop: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The loop's points where its direction changes."""
    n = len(loop)
    out = []
    for i, (x, y) in enumerate(loop):
        px, py = loop[i - 1]
        nx, ny = loop[(i + 1) % n]
        if (x - px, y - py) != (nx - x, ny - y):
            out.append((x, y))
    return out


def _signed_area(points: list[tuple[int, int]]) -> float:
    """Shoelace area; positive for loops clockwise on screen (y pointing down)."""
    return 0.5 * sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(points, points[1:] + points[:1]))
