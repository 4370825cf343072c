"""Evaluation reports: per-case and summary tables, box plots, training curves, overlays, Markdown.

:func:`write_report` turns per-case metric rows (as :func:`medseg.evaluation.metrics.metrics_to_rows`
gives) into a folder a person can read::

    metrics.csv  metrics.json  summary.csv  summary.json  boxplot_<metric>.png
    training_curves.png  overlay_<case>.png  report.md

Every file is written to a temporary name in the output folder and moved into place with
``os.replace``, so a reader never sees half a file. Plots need matplotlib (the ``medseg[report]``
extra); it is imported only when a plot is drawn, and drawn with the Agg canvas directly, so the
user's pyplot backend is left alone.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, NamedTuple

import numpy as np

from medseg.evaluation.metrics import METRIC_NAMES, summarize

__all__ = ["OverlayCase", "write_report"]

Row = Mapping[str, Any]
History = Sequence[Mapping[str, float]]
_SUMMARY_COLUMNS = ("mean", "std", "median", "n", "n_nan", "n_inf")


class OverlayCase(NamedTuple):
    """Arrays of one case to draw: ``image`` ``(*spatial)`` or ``(C, *spatial)`` (channel 0 is
    drawn), ``reference`` and ``prediction`` integer label maps ``(*spatial)``, 2D or 3D."""

    image: np.ndarray
    reference: np.ndarray
    prediction: np.ndarray


# --- files --------------------------------------------------------------------------------------


def _atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Write ``path`` through a temporary file in the same folder, then ``os.replace`` it."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return path


def _write_text(path: Path, text: str) -> Path:
    return _atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def _json_value(value: Any) -> Any:
    """JSON-safe value: NaN -> null, +-inf -> "inf"/"-inf", NumPy scalars -> Python numbers."""
    if isinstance(value, Mapping):
        return {str(key): _json_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_value(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
    return value


def _write_json(path: Path, data: Any) -> Path:
    return _write_text(path, json.dumps(_json_value(data), indent=2, allow_nan=False) + "\n")


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float | np.floating):
        return repr(float(value))  # full precision; 'nan', 'inf'
    return str(value.item() if isinstance(value, np.generic) else value)


def _write_csv(path: Path, columns: Sequence[str], records: Sequence[Row]) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([_csv_cell(record.get(column)) for column in columns] for record in records)
    return _write_text(path, buffer.getvalue())


def _file_stem(case: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(case)).strip("._") or "case"


# --- tables -------------------------------------------------------------------------------------


def _check_rows(rows: Sequence[Row]) -> tuple[list[str], list[str]]:
    """Validate rows; return the metric columns present and the other extra columns."""
    if not rows:
        raise ValueError("rows is empty; pass one dict per case and label with metric values.")
    keys: dict[str, None] = {}
    for index, row in enumerate(rows):
        missing = [key for key in ("case", "label") if key not in row]
        if missing:
            raise ValueError(f"rows[{index}] lacks {missing}; each row needs 'case' and 'label'.")
        keys.update(dict.fromkeys(row))
    metrics = [name for name in METRIC_NAMES if name in keys]
    extras = [key for key in keys if key not in ("fold", "case", "label", *METRIC_NAMES)]
    return metrics, extras


def _write_tables(folder: Path, rows: Sequence[Row], metrics: list[str], extras: list[str]):
    summary = summarize(rows)
    summary_records = [
        {"label": label, "metric": metric, **stats}
        for label, per_metric in summary.items()
        for metric, stats in per_metric.items()
    ]
    paths = [
        _write_csv(folder / "metrics.csv", ["fold", "case", "label", *metrics, *extras], rows),
        _write_json(folder / "metrics.json", [dict(row) for row in rows]),
        _write_csv(folder / "summary.csv", ["label", "metric", *_SUMMARY_COLUMNS], summary_records),
        _write_json(folder / "summary.json", summary),
    ]
    return paths, summary


# --- plots --------------------------------------------------------------------------------------


def _require_matplotlib() -> None:
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
    _require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save_png(figure, path: Path) -> Path:
    return _atomic_write(path, lambda handle: figure.savefig(handle, format="png"))


def _plot_box(folder: Path, rows: Sequence[Row], metric: str) -> Path:
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
    n_left_out = sum(1 for row in rows if metric in row and not _finite(row[metric]))
    note = f" ({n_left_out} non-finite left out)" if n_left_out else ""
    axes.set_title(f"{metric}{note}")
    axes.set_xticks(range(1, len(labels) + 1), [f"label {label}" for label in labels])
    axes.set_xlim(0.4, len(labels) + 0.6)
    if len(points) > 1 or None not in points:
        axes.legend(fontsize="small")
    return _save_png(figure, folder / f"boxplot_{metric}.png")


def _finite(value: Any) -> bool:
    return value is not None and math.isfinite(float(value))


def _plot_histories(path: Path, histories: Mapping[Any, History]) -> Path:
    figure = _figure(10.0, 4.0)
    loss_axes, dice_axes = figure.subplots(1, 2)
    for number, (fold, history) in enumerate(histories.items()):
        for axes, key in ((loss_axes, "loss"), (dice_axes, "val_dice")):
            pairs = [
                (entry.get("epoch", index), entry[key])
                for index, entry in enumerate(history)
                if _finite(entry.get(key))
            ]
            if pairs:
                epochs, values = zip(*pairs, strict=True)
                marker = "." if len(pairs) < 30 else None
                colour = f"C{number % 10}"  # one colour per fold in both panels
                axes.plot(epochs, values, marker=marker, color=colour, label=f"fold {fold}")
    for axes, name in ((loss_axes, "training loss"), (dice_axes, "validation Dice")):
        axes.set_title(name)
        axes.set_xlabel("epoch")
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


def _check_overlay(case: str, arrays: OverlayCase) -> OverlayCase:
    image, reference, prediction = (np.asarray(array) for array in arrays)
    if image.ndim == reference.ndim + 1:
        image = image[0]
    if not image.shape == reference.shape == prediction.shape or reference.ndim not in (2, 3):
        raise ValueError(
            f"overlay {case!r}: image, reference and prediction must share one 2D or 3D shape "
            f"(image may add a leading channel axis), got {np.shape(arrays[0])}, "
            f"{reference.shape} and {prediction.shape}."
        )
    return OverlayCase(image, reference, prediction)


def _plot_overlay(path: Path, case: str, arrays: OverlayCase, caption: str) -> Path:
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


# --- overlay selection and Markdown -------------------------------------------------------------


def _mean_dice(rows: Sequence[Row]) -> dict[str, float]:
    collected: dict[str, list[float]] = {}
    for row in rows:
        if _finite(row.get("dice")):
            collected.setdefault(str(row["case"]), []).append(float(row["dice"]))
    return {case: float(np.mean(values)) for case, values in collected.items()}


def _select_overlays(rows: Sequence[Row], cases: Sequence[str]) -> list[tuple[str, str, float]]:
    """(case, roles, mean Dice) for the worst, median and best of ``cases`` by mean Dice."""
    dice = _mean_dice(rows)
    unscored = [case for case in cases if case not in dice]
    if unscored:
        warnings.warn(f"no Dice in rows for overlay cases {unscored}; not drawn.", stacklevel=3)
    ranked = sorted((case for case in cases if case in dice), key=lambda case: (dice[case], case))
    if not ranked:
        return []
    roles: dict[str, list[str]] = {}
    for role, index in (("worst", 0), ("median", (len(ranked) - 1) // 2), ("best", -1)):
        roles.setdefault(ranked[index], []).append(role)
    return [(case, "/".join(names), dice[case]) for case, names in roles.items()]


def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.4g}"


def _markdown(title: str, rows: Sequence[Row], summary, figures: dict[str, list[tuple[str, str]]]):
    cases = sorted({str(row["case"]) for row in rows})
    folds = sorted({str(row.get("fold")) for row in rows if row.get("fold") is not None})
    lines = [f"# {title}", "", f"{len(cases)} cases, {len(folds) or 'no'} folds.", ""]
    lines += ["## Summary", "", "Mean, standard deviation and median over cases of finite values;"]
    lines += ["non-finite counts NaN (undefined) and inf (one mask empty) values.", ""]
    lines += [
        "| label | metric | mean | std | median | n | NaN | inf |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, per_metric in summary.items():
        for metric, s in per_metric.items():
            cells = [
                _fmt(s["mean"]),
                _fmt(s["std"]),
                _fmt(s["median"]),
                s["n"],
                s["n_nan"],
                s["n_inf"],
            ]
            lines.append(f"| {label} | {metric} | " + " | ".join(map(str, cells)) + " |")
    lines += ["", "## Files", ""]
    for name in ("metrics.csv", "metrics.json", "summary.csv", "summary.json"):
        lines.append(f"- [{name}]({name})")
    for heading, items in figures.items():
        if items:
            lines += ["", f"## {heading}", ""]
            lines += [f"![{caption}]({name})\n\n{caption}\n" for name, caption in items]
    return "\n".join(lines).rstrip() + "\n"


# --- entry point --------------------------------------------------------------------------------


def write_report(
    output_dir: str | os.PathLike[str],
    rows: Sequence[Row],
    *,
    histories: Mapping[Any, History] | Sequence[History] | None = None,
    overlays: Mapping[str, OverlayCase | tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None,
    title: str = "medseg evaluation report",
    plots: bool = True,
) -> list[Path]:
    """Write the tables, plots and ``report.md`` of an evaluation into ``output_dir``.

    Args:
        output_dir: folder to write into (created if missing; existing report files replaced).
        rows: one dict per case and label with ``case``, ``label``, optionally ``fold``, and metric
            keys of :data:`~medseg.evaluation.metrics.METRIC_NAMES`; other keys are kept in
            ``metrics.csv``/``metrics.json``.
        histories: per fold, a list of ``{"epoch", "loss", "val_dice"}`` dicts (a mapping
            ``fold -> list`` or a list indexed by fold); drawn into ``training_curves.png``.
        overlays: ``case -> OverlayCase(image, reference, prediction)`` candidates; the worst,
            median and best of them by mean Dice over labels (and folds) are drawn into
            ``overlay_<case>.png``, for 3D on the last-axis slice with most reference foreground.
        title: heading of ``report.md``.
        plots: draw PNGs (needs matplotlib); ``False`` writes the tables and ``report.md`` only.

    Returns:
        The paths written, ``report.md`` last.

    Files: ``metrics.csv``/``metrics.json`` hold the rows (JSON writes NaN as ``null`` and
    infinities as ``"inf"``); ``summary.csv``/``summary.json`` the mean, std (ddof=0), median,
    ``n``, ``n_nan`` and ``n_inf`` per label and metric of
    :func:`~medseg.evaluation.metrics.summarize`.

    Example:
        >>> rows = [{"fold": 0, "case": "a", "label": 1, "dice": 0.9}]
        >>> [p.name for p in write_report(tmp_dir, rows, plots=False)]  # doctest: +SKIP
        ['metrics.csv', 'metrics.json', 'summary.csv', 'summary.json', 'report.md']
    """
    rows = list(rows)
    metrics, extras = _check_rows(rows)
    if histories is not None and not isinstance(histories, Mapping):
        histories = dict(enumerate(histories))
    checked = {
        str(case): _check_overlay(str(case), OverlayCase(*arrays))
        for case, arrays in (overlays or {}).items()
    }
    if plots:
        _require_matplotlib()  # fail before writing anything
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    written, summary = _write_tables(folder, rows, metrics, extras)
    figures: dict[str, list[tuple[str, str]]] = {
        "Metric distributions": [],
        "Training curves": [],
        "Overlays": [],
    }
    if plots:
        for metric in metrics:
            written.append(_plot_box(folder, rows, metric))
            figures["Metric distributions"].append((written[-1].name, f"{metric} per label"))
        if histories:
            written.append(_plot_histories(folder / "training_curves.png", histories))
            figures["Training curves"].append(
                (written[-1].name, "training loss and validation Dice")
            )
        for case, roles, dice in _select_overlays(rows, list(checked)):
            caption = f"{roles} case by mean Dice ({dice:.3f})"
            written.append(
                _plot_overlay(
                    folder / f"overlay_{_file_stem(case)}.png", case, checked[case], caption
                )
            )
            figures["Overlays"].append((written[-1].name, f"{case}: {caption}"))
    written.append(_write_text(folder / "report.md", _markdown(title, rows, summary, figures)))
    return written
