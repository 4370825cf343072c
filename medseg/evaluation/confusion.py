"""The natural-image metrics: a confusion matrix accumulated over a whole split, and the mean
IoU, pixel accuracy and per-class IoU read from it (PASCAL VOC's and Cityscapes' mIoU).

A split is scored by *summing* the per-image confusion matrices and computing each class's
IoU = TP / (TP + FP + FN) once from the sum, not by averaging per-image IoUs: a large image
weighs more than a small one, and a class missing from one image does not count as 0 or 1 there.
Ignored pixels (the reference's ignore value) are left out of the matrix.

Classes are every class of the dataset, background (value 0) included, as VOC's devkit counts
its 21 classes. A class absent from both the reference and the prediction of the whole split has
no IoU (0/0): it is NaN and left out of the mean, as cityscapesScripts'
``evalPixelLevelSemanticLabeling.getScoreAverage`` skips NaN scores (VOC's devkit never meets
the case, every VOC class being in its val set).

Example:
    >>> ref, pred = np.array([[0, 1], [1, 1]]), np.array([[0, 1], [0, 1]])
    >>> m = confusion_matrix(pred, ref, classes=[0, 1])
    >>> m.tolist()  # rows: reference class, columns: predicted class
    [[1, 0], [1, 2]]
    >>> iou_per_class(m).tolist(), round(mean_iou(m), 4), pixel_accuracy(m)
    ([0.5, 0.6666666666666666], 0.5833, 0.75)
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["case_confusion", "confusion_matrix", "folds_block", "dataset_rows", "dataset_scores", "describe_dataset_block", "iou_per_class", "mean_iou", "pixel_accuracy"]


def confusion_matrix(prediction: np.ndarray, reference: np.ndarray, classes: Sequence[int], *,
                     ignore: int | None = None) -> np.ndarray:
    """``(K, K)`` pixel counts, ``[i, j]`` = reference class ``classes[i]`` predicted ``classes[j]``.

    Args:
        prediction: a label map of class values, the shape of ``reference``.
        reference: the reference label map; pixels holding ``ignore`` are left out.
        classes: the class values, background first; a value that is no class counts as the
            background (index 0).
        ignore: the reference's ignore value, or ``None``.

    Raises:
        ValueError: naming both shapes when they differ.
    """
    prediction, reference = np.asarray(prediction), np.asarray(reference)
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from reference shape {reference.shape}.")
    keep = np.ones(reference.shape, bool) if ignore is None else reference != ignore
    size = len(classes)
    lookup = {int(v): i for i, v in enumerate(classes)}
    ref_index, pred_index = (_indices(a[keep], lookup) for a in (reference, prediction))
    return np.bincount(ref_index * size + pred_index, minlength=size * size).reshape(size, size).astype(np.int64)


def _indices(values: np.ndarray, lookup: Mapping[int, int]) -> np.ndarray:
    found = np.unique(values)
    out = np.zeros(values.shape, np.int64)
    for value in found:
        out[values == value] = lookup.get(int(value), 0)
    return out


def iou_per_class(matrix: np.ndarray) -> np.ndarray:
    """Per class TP / (TP + FP + FN) of a summed matrix; NaN for a class in neither reference nor prediction."""
    matrix = np.asarray(matrix, np.float64)
    tp = np.diag(matrix)
    union = matrix.sum(0) + matrix.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)


def mean_iou(matrix: np.ndarray, *, skip_background: bool = False) -> float:
    """The mean of :func:`iou_per_class` over the classes that have one (NaN when none has)."""
    values = iou_per_class(matrix)[1 if skip_background else 0:]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all NaN: no class present
        return float(np.nanmean(values)) if values.size else float("nan")


def pixel_accuracy(matrix: np.ndarray) -> float:
    """Correct pixels over scored pixels (NaN when none is scored)."""
    matrix = np.asarray(matrix)
    total = matrix.sum()
    return float(np.trace(matrix) / total) if total else float("nan")


def dataset_scores(matrices: Iterable[np.ndarray], classes: Sequence[int],
                   names: Mapping[int, str] | None = None) -> dict[str, Any]:
    """The split's block: the summed matrix and what VOC/Cityscapes report from it.

    Returns:
        ``{"classes", "names", "confusion_matrix" (rows reference), "iou" {value: IoU or NaN},
        "mean_iou" (background included), "mean_iou_foreground", "pixel_accuracy",
        "mean_of_image_mean_iou" (the per-image average, for comparison: not the benchmark's number)}``.
    """
    matrices = [np.asarray(m) for m in matrices]
    total = np.sum(matrices, axis=0) if matrices else np.zeros((len(classes),) * 2, np.int64)
    names = dict(names or {})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        per_image = float(np.nanmean([mean_iou(m) for m in matrices])) if matrices else float("nan")
    return {"classes": [int(c) for c in classes],
            "names": [names.get(int(c), "background" if int(c) == 0 else f"class_{int(c)}") for c in classes],
            "confusion_matrix": total.tolist(),
            "iou": {int(c): float(v) for c, v in zip(classes, iou_per_class(total))},
            "mean_iou": mean_iou(total), "mean_iou_foreground": mean_iou(total, skip_background=True),
            "pixel_accuracy": pixel_accuracy(total), "mean_of_image_mean_iou": per_image}


def dataset_rows(block: dict[str, Any]) -> list[dict[str, Any]]:
    """``case = "dataset"`` rows: per class Dice and IoU of the summed matrix, then the means."""
    matrix = np.asarray(block["confusion_matrix"], np.float64)
    tp, fp, fn = np.diag(matrix), matrix.sum(0) - np.diag(matrix), matrix.sum(1) - np.diag(matrix)
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = 2 * tp / (2 * tp + fp + fn)
    rows = [{"case": "dataset", "label": c, "dice": float(d), "iou": block["iou"][c]}
            for c, d in zip(block["classes"], dice)]
    return [*rows, {"case": "dataset", "label": "mean", "iou": block["mean_iou"],
                    "pixel_accuracy": block["pixel_accuracy"]}]


def describe_dataset_block(block: dict[str, Any] | None) -> str:
    """Lines for a console, each after a newline: mean IoU, pixel accuracy and the IoU of each
    class (nothing for ``None``)."""
    if block is None:
        return ""
    ious = ", ".join(f"{name} {block['iou'][c]:.4f}" for c, name in zip(block["classes"], block["names"]))
    return (f"\nmean IoU {block['mean_iou']:.4f} (confusion matrix summed over the cases, background included; "
            f"foreground only {block['mean_iou_foreground']:.4f}; mean of per-case mIoU "
            f"{block['mean_of_image_mean_iou']:.4f}), pixel accuracy {block['pixel_accuracy']:.4f}\n"
            f"IoU per class: {ious}")


def case_confusion(prediction: np.ndarray, label: np.ndarray, spec: Any,
                   total: np.ndarray | None = None) -> np.ndarray | None:
    """``total`` plus the matrix of one case: ``prediction`` in dataset values (as
    ``Pipeline.predict_case`` gives), ``label`` in class indices (ignored: ``IGNORE_INDEX``), rows
    and columns the class indices of ``spec`` (a LabelSpec). ``None`` for a region spec."""
    from ..io.labels import IGNORE_INDEX

    if spec.is_regions:
        return None
    matrix = confusion_matrix(spec.encode(prediction), label, range(spec.num_classes), ignore=IGNORE_INDEX)
    return matrix if total is None else total + matrix


def folds_block(results: Sequence[Mapping[str, Any]], spec: Any) -> dict[str, Any] | None:
    """The cross-validation's :func:`dataset_scores` from each fold's ``"confusion"`` (class
    indices of ``spec``, keyed here by dataset value); ``None`` for regions or folds without one."""
    matrices = [result.get("confusion") for result in results]
    if spec.is_regions or not matrices or any(m is None for m in matrices):
        return None
    block = dataset_scores([np.asarray(m) for m in matrices], spec.values, dict(zip(spec.values, spec.names)))
    return {**block, "mean_of_image_mean_iou": None}  # the folds' matrices hold no single case
