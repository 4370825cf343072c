"""Report figures: box plots of a metric over cases and folds, training curves, and contour
overlays of image, reference and prediction.

Drawn on a matplotlib ``Figure`` with its own Agg canvas (pyplot and the user's backend are left
alone); matplotlib is imported only when a figure is drawn (the ``medseg[report]`` extra). Each
PNG is written to a temporary file and moved into place.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..io.files import atomic_path

Row = Mapping[str, Any]
History = Sequence[Mapping[str, float]]

# --- plots --------------------------------------------------------------------------------------


def require_matplotlib() -> None:
    """Raise an ImportError naming the ``medseg[report]`` extra when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
    except ImportError as error:
        raise ImportError(
            "Plots in medseg reports need matplotlib: pip install 'medseg[report]' "
            "(or pip install matplotlib), or call write_report(..., plots=False)."
        ) from error


def _figure(width: float, height: float):
    """A matplotlib Figure on its own Agg canvas (no pyplot, no global backend change)."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save_png(figure, path: Path) -> Path:
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png")
    return path


def plot_box(folder: Path, rows: Sequence[Row], metric: str, label_names: Mapping[int, str] | None = None) -> Path:
    labels = sorted({int(row["label"]) for row in rows if metric in row})
    folds = sorted({row.get("fold") for row in rows}, key=str)
    figure = _figure(1.6 + 1.2 * len(labels), 4.0)
    axes = figure.add_subplot()
    values = {label: [] for label in labels}
    points: dict[Any, tuple[list[float], list[float]]] = {fold: ([], []) for fold in folds}
    jitter = np.random.default_rng(0)
    for row in rows:
        value = row.get(metric)
        if value is None or not math.isfinite(float(value)):
            continue
        position = labels.index(int(row["label"])) + 1
        values[int(row["label"])].append(float(value))
        points[row.get("fold")][0].append(position + jitter.uniform(-0.15, 0.15))
        points[row.get("fold")][1].append(float(value))
    positions = [i + 1 for i, label in enumerate(labels) if values[label]]
    if positions:
        axes.boxplot([values[labels[p - 1]] for p in positions], positions=positions, widths=0.5)
    for fold, (xs, ys) in points.items():
        if xs:
            axes.scatter(xs, ys, s=12, alpha=0.7, label=f"fold {fold}")
    n_left_out = sum(1 for row in rows if metric in row and not finite(row[metric]))
    note = f" ({n_left_out} non-finite left out)" if n_left_out else ""
    axes.set_title(f"{metric}{note}")
    axes.set_xticks(range(1, len(labels) + 1), [label_title(label, label_names) for label in labels])
    axes.set_xlim(0.4, len(labels) + 0.6)
    if len(points) > 1 or None not in points:
        axes.legend(fontsize="small")
    return _save_png(figure, folder / f"boxplot_{metric}.png")


def label_title(label: int, names: Mapping[int, str] | None = None) -> str:
    """``"Anterior (1)"`` where the class has a name, else ``"label 1"``."""
    name = (names or {}).get(int(label))
    return f"{name} ({label})" if name else f"label {label}"


def finite(value: Any) -> bool:
    """A value that is there and is a finite number."""
    return value is not None and math.isfinite(float(value))


def plot_histories(path: Path, histories: Mapping[Any, History]) -> Path:
    figure = _figure(10.0, 4.0)
    loss_axes, dice_axes = figure.subplots(1, 2)
    for number, (fold, history) in enumerate(histories.items()):
        for axes, key in ((loss_axes, "loss"), (dice_axes, "val_dice")):
            pairs = [
                (entry.get("epoch", index), entry[key])
                for index, entry in enumerate(history)
                if finite(entry.get(key))
            ]
            if pairs:
                epochs, values = zip(*pairs, strict=True)
                marker = "." if len(pairs) < 30 else None
                colour = f"C{number % 10}"  # one colour per fold in both panels
                axes.plot(epochs, values, marker=marker, color=colour, label=f"fold {fold}")
    from matplotlib.ticker import MaxNLocator

    for axes, name in ((loss_axes, "training loss"), (dice_axes, "validation Dice")):
        axes.set_title(name)
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        if axes.lines:
            axes.legend(fontsize="small")
    return _save_png(figure, path)


def _pick_slice(reference: np.ndarray, prediction: np.ndarray) -> int:
    """Index along the last axis with most reference foreground (prediction, then middle, if none)."""
    for mask in (reference != 0, prediction != 0):
        counts = mask.reshape(-1, mask.shape[-1]).sum(axis=0)
        if counts.any():
            return int(np.argmax(counts))
    return reference.shape[-1] // 2


def plot_overlay(path: Path, case: str, arrays: tuple[np.ndarray, np.ndarray, np.ndarray], caption: str) -> Path:
    """Contours of reference (solid) and prediction (dashed) per label over the image; a 3D case
    is drawn on the last-axis slice with most reference foreground."""
    image, reference, prediction = arrays
    where = ""
    if reference.ndim == 3:
        index = _pick_slice(reference, prediction)
        image, reference, prediction = (
            image[..., index],
            reference[..., index],
            prediction[..., index],
        )
        where = f", slice {index} of the last axis"
    figure = _figure(5.0, 5.4)
    axes = figure.add_subplot()
    axes.imshow(image.T, cmap="gray", origin="lower", interpolation="nearest")  # axis 0 across
    colours = ["tab:green", "tab:orange", "tab:cyan", "tab:pink", "tab:olive"]
    handles = []
    labels = np.union1d(np.unique(reference), np.unique(prediction))
    for number, label in enumerate(label for label in labels if label != 0):
        colour = colours[number % len(colours)]
        for mask, style, name in (
            (reference, "solid", "reference"),
            (prediction, "dashed", "prediction"),
        ):
            if (mask == label).any():
                axes.contour(
                    (mask == label).T.astype(float), levels=[0.5], colors=colour, linestyles=style
                )
            handles.append(_legend_line(colour, style, f"{name} {label}"))
    if handles:
        axes.legend(handles=handles, fontsize="x-small", loc="upper right")
    axes.set_title(f"{case}: {caption}{where}", fontsize="small")
    axes.set_axis_off()
    return _save_png(figure, path)


def _legend_line(colour: str, style: str, text: str):
    from matplotlib.lines import Line2D

    return Line2D([], [], color=colour, linestyle=style, label=text)
