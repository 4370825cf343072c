"""COCO's mask encodings, decoded and encoded without pycocotools.

COCO stores an object's mask as polygons (``[[x1, y1, x2, y2, ...], ...]`` in pixel coordinates)
or as a run-length encoding (RLE) ``{"size": [h, w], "counts": ...}``: alternating runs of 0s
and 1s (the first run counts 0s and may be empty) over the pixels in column-major order, i.e.
down the first column, then the second. ``counts`` is a list of integers ("uncompressed", used
for crowd regions) or a string ("compressed": each run a little-endian base-32 number in
characters ``48 + 5 bits``, the continuation bit 0x20, runs from the fourth on stored as the
difference to the run two before), as ``maskApi.c`` of the COCO API writes it.

Masks here are ``(h, w)`` boolean arrays (row = y, column = x), as COCO draws them; polygons are
rasterised with the COCO API's rule (``rleFrPoly``: boundary points at 5x resolution, a pixel
is inside when its centre is), so a mask equals the one ``pycocotools.mask.decode`` gives.

Example:
    >>> rle = encode_rle(np.array([[0, 1], [1, 1]], bool))
    >>> rle
    {'size': [2, 2], 'counts': '13'}
    >>> decode_rle(rle).astype(int).tolist()
    [[0, 1], [1, 1]]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ...errors import DataError

__all__ = ["annotation_mask", "area", "bbox", "decode_polygons", "decode_rle", "encode_rle", "rle_counts"]


# --- run-length encoding -----------------------------------------------------------------------


def _counts_from_string(text: str) -> list[int]:
    counts: list[int] = []
    position = 0
    while position < len(text):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(text):
                raise DataError(f"COCO RLE counts {text[:40]!r}: truncated string.")
            chunk = ord(text[position]) - 48
            value |= (chunk & 0x1F) << shift
            more = bool(chunk & 0x20)
            position += 1
            shift += 5
            if not more and chunk & 0x10:
                value |= -1 << shift
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def _counts_to_string(counts: Sequence[int]) -> str:
    chars: list[str] = []
    for i, count in enumerate(counts):
        value = int(count) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            chunk = value & 0x1F
            value >>= 5
            more = value != -1 if chunk & 0x10 else value != 0
            chars.append(chr((chunk | (0x20 if more else 0)) + 48))
    return "".join(chars)


def rle_counts(rle: Mapping[str, Any]) -> tuple[tuple[int, int], list[int]]:
    """``((h, w), runs)`` of an RLE with list or string counts.

    Raises:
        DataError: when the runs do not add up to ``h * w`` or a run is negative.
    """
    try:
        height, width = (int(v) for v in rle["size"])
        counts = rle["counts"]
    except (KeyError, TypeError, ValueError) as error:
        raise DataError(f"COCO RLE {str(rle)[:80]}: expected {{'size': [h, w], 'counts': ...}} ({error}).") from None
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    runs = _counts_from_string(counts) if isinstance(counts, str) else [int(c) for c in counts]
    if any(r < 0 for r in runs) or sum(runs) != height * width:
        raise DataError(f"COCO RLE of size {[height, width]}: its runs add up to {sum(runs)} pixels, not "
                        f"{height * width} (or a run is negative); the annotation is damaged.")
    return (height, width), runs


def decode_rle(rle: Mapping[str, Any]) -> np.ndarray:
    """The ``(h, w)`` boolean mask of an RLE (list or string counts)."""
    (height, width), runs = rle_counts(rle)
    values = np.zeros(len(runs), bool)
    values[1::2] = True
    flat = np.repeat(values, runs)
    return flat.reshape((width, height)).T  # column-major


def encode_rle(mask: np.ndarray, *, compressed: bool = True) -> dict[str, Any]:
    """The RLE of an ``(h, w)`` mask: ``counts`` a string (COCO's compressed form) or a list."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"encode_rle: expected an (h, w) mask, got shape {mask.shape}.")
    flat = mask.T.reshape(-1).astype(bool)
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    edges = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(edges).tolist()
    if flat.size and flat[0]:
        runs = [0, *runs]
    if not flat.size:
        runs = []
    counts: Any = _counts_to_string(runs) if compressed else runs
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def area(rle: Mapping[str, Any]) -> int:
    """The number of pixels in an RLE's mask."""
    return int(sum(rle_counts(rle)[1][1::2]))


def bbox(mask: np.ndarray) -> list[float]:
    """COCO's ``[x, y, width, height]`` of a mask's pixels (zeros for an empty mask)."""
    mask = np.asarray(mask, bool)
    columns, rows = np.flatnonzero(mask.any(axis=0)), np.flatnonzero(mask.any(axis=1))
    if not columns.size:
        return [0.0, 0.0, 0.0, 0.0]
    return [float(columns[0]), float(rows[0]), float(columns[-1] - columns[0] + 1), float(rows[-1] - rows[0] + 1)]


# --- polygons ----------------------------------------------------------------------------------


def _boundary(xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every integer point along the closed polygon's edges, as ``rleFrPoly`` steps them: along
    the longer axis of each edge, the other coordinate rounded half up (C's truncating cast)."""
    x0, x1, y0, y1 = xs[:-1], xs[1:], ys[:-1], ys[1:]
    dx, dy = np.abs(x1 - x0), np.abs(y0 - y1)
    along_x = dx >= dy
    flip = (along_x & (x0 > x1)) | (~along_x & (y0 > y1))
    x0, x1 = np.where(flip, x1, x0), np.where(flip, x0, x1)
    y0, y1 = np.where(flip, y1, y0), np.where(flip, y0, y1)
    steps = np.where(along_x, dx, dy)
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = np.where(along_x, (y1 - y0) / np.where(dx > 0, dx, 1), (x1 - x0) / np.where(dy > 0, dy, 1))
    segment = np.repeat(np.arange(len(steps)), steps + 1)
    d = np.arange(len(segment)) - np.repeat(np.cumsum(steps + 1) - (steps + 1), steps + 1)
    t = np.where(flip[segment], steps[segment] - d, d)
    rounded_y = (y0[segment] + slope[segment] * t + 0.5).astype(np.int64)
    rounded_x = (x0[segment] + slope[segment] * t + 0.5).astype(np.int64)
    ax = along_x[segment]
    return np.where(ax, t + x0[segment], rounded_x), np.where(ax, rounded_y, t + y0[segment])


def _polygon_mask(polygon: Sequence[float], height: int, width: int) -> np.ndarray:
    """The ``(h, w)`` mask of one polygon: where the boundary crosses a column's pixel centres
    (at 5x resolution), the column toggles between outside and inside, as in ``rleFrPoly``."""
    scale = 5.0
    coords = np.asarray(polygon, np.float64)
    xs = (scale * coords[0::2] + 0.5).astype(np.int64)  # C's (int) truncates toward zero, as astype
    ys = (scale * coords[1::2] + 0.5).astype(np.int64)
    us, vs = _boundary(np.append(xs, xs[0]), np.append(ys, ys[0]))
    moved = us[1:] != us[:-1]
    u, u_prev, v, v_prev = us[1:][moved], us[:-1][moved], vs[1:][moved], vs[:-1][moved]
    xd = (np.where(u < u_prev, u, u - 1) + 0.5) / scale - 0.5
    keep = (np.floor(xd) == xd) & (xd >= 0) & (xd <= width - 1)
    yd = np.ceil(np.clip((np.minimum(v, v_prev) + 0.5) / scale - 0.5, 0, height))
    starts = xd[keep].astype(np.int64) * height + yd[keep].astype(np.int64)
    found, times = np.unique(starts[starts < height * width], return_counts=True)
    toggles = found[times % 2 == 1]  # two toggles at one pixel cancel (rleFrPoly's zero runs)
    runs = np.diff(np.concatenate([[0], toggles, [height * width]]))
    inside = np.repeat(np.arange(len(runs)) % 2 == 1, runs)
    return inside.reshape(width, height).T


def decode_polygons(polygons: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """The ``(h, w)`` mask of one annotation's polygons (their union), as the COCO API draws it.

    Raises:
        DataError: when a polygon has fewer than 3 points or an odd number of coordinates.
    """
    mask = np.zeros((height, width), bool)
    for polygon in polygons:
        if len(polygon) < 6 or len(polygon) % 2:
            raise DataError(f"COCO polygon {list(polygon)[:8]}...: needs x, y pairs of at least 3 points, "
                            f"got {len(polygon)} numbers.")
        mask |= _polygon_mask(polygon, height, width)
    return mask


def annotation_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """The ``(h, w)`` mask of an annotation's ``segmentation`` (polygons, or RLE of any counts).

    Raises:
        DataError: when an RLE's size differs from the image's ``(height, width)``.
    """
    if isinstance(segmentation, list):
        return decode_polygons(segmentation, height, width)
    mask = decode_rle(segmentation)
    if mask.shape != (height, width):
        raise DataError(f"COCO RLE of size {list(mask.shape)} on an image of {height}x{width} (h x w); "
                        "the annotation belongs to another image.")
    return mask
