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

import os
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, NamedTuple

import numpy as np

from medseg.evaluation.metrics import METRIC_NAMES, summarize
from medseg.evaluation.plots import (
    finite,
    label_title,
    plot_box,
    plot_histories,
    plot_overlay,
    require_matplotlib,
)
from medseg.evaluation.tables import write_csv as _write_csv
from medseg.evaluation.tables import write_json as _write_json
from medseg.io.files import atomic_path

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
    """Write ``path`` through a temporary file in the same folder, then move it into place."""
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        write(handle)
    return path


def _write_text(path: Path, text: str) -> Path:
    return _atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


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


# --- overlay selection and Markdown -------------------------------------------------------------


def _mean_dice(rows: Sequence[Row]) -> dict[str, float]:
    collected: dict[str, list[float]] = {}
    for row in rows:
        if finite(row.get("dice")):
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
    return f"{value:.4g}"  # 'nan', 'inf' as in the CSV and JSON tables


def _dataset_lines(dataset: Mapping[str, Any] | None) -> list[str]:
    """The split's confusion-matrix scores (see :mod:`medseg.evaluation.confusion`)."""
    if not dataset:
        return []
    lines = ["", "## Over the whole split (confusion matrix)", "",
             f"Mean IoU {_fmt(dataset['mean_iou'])} over the classes, background included (foreground only "
             f"{_fmt(dataset['mean_iou_foreground'])}); pixel accuracy {_fmt(dataset['pixel_accuracy'])}.", "",
             "| class | IoU |", "|---|---|"]
    return lines + [f"| {name} | {_fmt(dataset['iou'][value])} |"
                    for value, name in zip(dataset["classes"], dataset["names"])]


def _markdown(title: str, rows: Sequence[Row], summary, figures: dict[str, list[tuple[str, str]]],
              label_names: Mapping[int, str] | None = None, dataset: Mapping[str, Any] | None = None):
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
            shown = label_title(label, label_names) if label_names else label
            lines.append(f"| {shown} | {metric} | " + " | ".join(map(str, cells)) + " |")
    lines += _dataset_lines(dataset)
    lines += ["", "## Files", ""]
    for name in ("metrics.csv", "metrics.json", "summary.csv", "summary.json", *(["dataset.json"] if dataset else [])):
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
    label_names: Mapping[int, str] | Sequence[str] | None = None,
    dataset: Mapping[str, Any] | None = None,
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
        label_names: class names by label value (a mapping, or a list indexed by label such as
            ``plan.class_names``), shown next to the numbers in ``report.md`` and the plots;
            the CSV and JSON files keep the integer labels.
        dataset: the split's confusion-matrix scores
            (:func:`~medseg.evaluation.confusion.dataset_scores`), written to ``dataset.json``
            and shown in ``report.md``.

    Returns:
        The paths written, ``report.md`` last.

    Files: ``metrics.csv``/``metrics.json`` hold the rows (NaN and infinities written as
    ``nan``/``inf`` in CSV and ``"nan"``/``"inf"`` in JSON, see :mod:`medseg.evaluation.tables`); ``summary.csv``/``summary.json`` the mean, std (ddof=0), median,
    ``n``, ``n_nan`` and ``n_inf`` per label and metric of
    :func:`~medseg.evaluation.metrics.summarize`.

    Example:
        >>> rows = [{"fold": 0, "case": "a", "label": 1, "dice": 0.9}]
        >>> [p.name for p in write_report(tmp_dir, rows, plots=False)]  # doctest: +SKIP
        ['metrics.csv', 'metrics.json', 'summary.csv', 'summary.json', 'report.md']
    """
    rows = list(rows)
    metrics, extras = _check_rows(rows)
    if label_names is not None and not isinstance(label_names, Mapping):
        label_names = dict(enumerate(label_names))
    if histories is not None and not isinstance(histories, Mapping):
        histories = dict(enumerate(histories))
    checked = {
        str(case): _check_overlay(str(case), OverlayCase(*arrays))
        for case, arrays in (overlays or {}).items()
    }
    if plots:
        require_matplotlib()  # fail before writing anything
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    written, summary = _write_tables(folder, rows, metrics, extras)
    if dataset:
        written.append(_write_json(folder / "dataset.json", dict(dataset)))
    figures: dict[str, list[tuple[str, str]]] = {
        "Metric distributions": [],
        "Training curves": [],
        "Overlays": [],
    }
    if plots:
        for metric in metrics:
            written.append(plot_box(folder, rows, metric, label_names))
            figures["Metric distributions"].append((written[-1].name, f"{metric} per label"))
        if histories:
            written.append(plot_histories(folder / "training_curves.png", histories))
            figures["Training curves"].append(
                (written[-1].name, "training loss and validation Dice")
            )
        for case, roles, dice in _select_overlays(rows, list(checked)):
            caption = f"{roles} case by mean Dice ({dice:.3f})"
            written.append(
                plot_overlay(
                    folder / f"overlay_{_file_stem(case)}.png", case, checked[case], caption
                )
            )
            figures["Overlays"].append((written[-1].name, f"{case}: {caption}"))
    written.append(_write_text(folder / "report.md", _markdown(title, rows, summary, figures, label_names, dataset)))
    return written
