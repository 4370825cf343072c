"""Spacing-aware segmentation metrics on integer label maps, computed with NumPy and SciPy.

The surface metrics follow MONAI's conventions (``monai.metrics``) so that numbers agree with
``HausdorffDistanceMetric``, ``SurfaceDistanceMetric(symmetric=True)`` and ``SurfaceDiceMetric``:

- a *surface* (edge) voxel is a foreground voxel with at least one face neighbour outside the
  mask; voxels beyond the array border count as background;
- distances go from every edge voxel of one mask to the nearest edge voxel of the other, in the
  physical units of ``spacing`` (exact Euclidean, by a KD-tree over the edge voxels of the
  bounding box of both masks);
- ``hd`` is the largest of all those distances; ``hd95`` the larger of the two directed 95th
  percentiles (linear interpolation, as ``torch.quantile``);
- ``assd`` is the mean of the concatenation of both directed distance sets;
- ``nsd`` (normalised surface Dice) is the fraction of edge voxels of both masks lying within
  ``nsd_tolerance`` of the other surface.

A *target* is a label value (``1``) or a region, a tuple of label values (``(1, 2, 3)``) scored as
one mask ``np.isin(map, region)`` in both arrays (BraTS' whole tumour). ``ignore`` names the
reference value of voxels left out of every metric: there both masks are empty and the voxel is
neither a true nor a false negative (nnU-Net's ignore label); for surface metrics an ignored voxel
lies outside both masks.

Nothing here imports torch (nor the rest of medseg), so metrics can be computed in light worker
processes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
from scipy import ndimage

from .summaries import METRIC_NAMES, metrics_to_rows, summarize
from .surface_distances import distance_metrics

__all__ = [
    "COUNT_NAMES",
    "METRIC_NAMES",
    "compute_metrics",
    "confusion_counts",
    "dice_per_label",
    "metrics_to_rows",
    "summarize",
]

Target = int | tuple[int, ...]
"""A label value, or a region: the tuple of label values scored as one mask."""

COUNT_NAMES: tuple[str, ...] = ("TP", "FP", "FN", "TN", "n_pred", "n_ref")
"""The keys of :func:`confusion_counts` (nnU-Net's ``summary.json`` names)."""



def _as_label_map(array: object, name: str) -> np.ndarray:
    """Return ``array`` as an integer NumPy array; floats are accepted when all values are whole."""
    array = np.asarray(array)
    if array.dtype == bool or np.issubdtype(array.dtype, np.integer):
        return array
    if np.issubdtype(array.dtype, np.floating) and np.all(np.mod(array, 1) == 0):
        return array.astype(np.int64)
    raise TypeError(
        f"{name} must be an integer label map, got dtype {array.dtype} with non-integer values; "
        f"convert it with np.rint({name}).astype(int) or take the argmax of probabilities first."
    )


def _check_inputs(prediction: object, reference: object) -> tuple[np.ndarray, np.ndarray]:
    prediction = _as_label_map(prediction, "prediction")
    reference = _as_label_map(reference, "reference")
    if prediction.shape != reference.shape:
        raise ValueError(
            f"prediction and reference must have the same shape, got {prediction.shape} and "
            f"{reference.shape}; resample the prediction onto the reference grid first."
        )
    if prediction.ndim not in (2, 3):
        raise ValueError(
            f"prediction and reference must be 2D or 3D label maps (*spatial), got shape "
            f"{prediction.shape}; drop channel/batch axes first."
        )
    return prediction, reference


def _check_spacing(spacing: float | Sequence[float] | None, ndim: int) -> np.ndarray:
    if spacing is None:
        return np.ones(ndim)
    values = np.asarray(spacing, dtype=np.float64)
    if values.ndim == 0:
        values = np.full(ndim, float(values))
    if values.shape != (ndim,) or not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(
            f"spacing must be one positive number or {ndim} positive numbers (one per axis), "
            f"got {spacing!r}."
        )
    return values


def _as_target(label: object) -> Target:
    if isinstance(label, tuple | list | np.ndarray):
        return tuple(int(value) for value in label)
    return int(label)  # type: ignore[call-overload]


def _resolve_labels(
    prediction: np.ndarray,
    reference: np.ndarray,
    labels: Iterable[Target] | None,
    ignore: int | None = None,
) -> list[Target]:
    if labels is None:
        present = np.union1d(np.unique(prediction), np.unique(reference))
        return [int(label) for label in present if label != 0 and label != ignore]
    targets = [_as_target(label) for label in labels]
    if ignore is not None:
        clash = [t for t in targets if ignore in (t if isinstance(t, tuple) else (t,))]
        if clash:
            raise ValueError(
                f"labels {clash} hold the ignore value {ignore}; ignored voxels are never scored, "
                f"drop {ignore} from labels or pass another ignore value."
            )
    return targets


def _mask(array: np.ndarray, target: Target) -> np.ndarray:
    """Where ``array`` holds the label ``target`` (or, for a region, any of its values)."""
    return np.isin(array, target) if isinstance(target, tuple) else array == target


def _kept(reference: np.ndarray, ignore: int | None) -> np.ndarray | None:
    """Voxels that are scored (``None``: all of them)."""
    return None if ignore is None else reference != ignore


def _divide(numerator: float, denominator: float) -> float:
    """``numerator / denominator``, or NaN for 0/0 (MONAI's ConfusionMatrixMetric convention)."""
    return float(numerator) / float(denominator) if denominator else math.nan


def _overlap_metrics(
    pred: np.ndarray, ref: np.ndarray, image_size: int, voxel_volume: float
) -> dict[str, float]:
    """Confusion-matrix metrics; ``pred``/``ref`` may be crops holding all of both masks."""
    tp = int(np.count_nonzero(pred & ref))
    n_pred = int(np.count_nonzero(pred))
    n_ref = int(np.count_nonzero(ref))
    fp, fn = n_pred - tp, n_ref - tp
    tn = image_size - tp - fp - fn
    both_empty = n_pred == 0 and n_ref == 0
    return {
        "dice": 1.0 if both_empty else 2.0 * tp / (n_pred + n_ref),
        "iou": 1.0 if both_empty else tp / (tp + fp + fn),
        "precision": 1.0 if both_empty else _divide(tp, n_pred),
        "recall": 1.0 if both_empty else _divide(tp, n_ref),
        "specificity": _divide(tn, tn + fp),
        "volume_difference": (n_pred - n_ref) * voxel_volume,
    }


def _label_boxes(
    prediction: np.ndarray, reference: np.ndarray, labels: list[Target]
) -> list[tuple[slice, ...]]:
    """Bounding box of each label in either array (an empty box where absent from both).

    Small positive labels take one ``ndimage.find_objects`` pass per array; others one scan
    per label.
    """
    empty = tuple(slice(0, 0) for _ in prediction.shape)
    plain = all(isinstance(label, int) for label in labels)
    if labels and plain and min(labels) >= 1 and max(labels) <= 65535:  # type: ignore[type-var]
        found = [
            ndimage.find_objects(
                array.view(np.uint8) if array.dtype == bool else array, max_label=max(labels)
            )
            for array in (prediction, reference)
        ]
        boxes = []
        for label in labels:
            index = int(label) - 1  # type: ignore[arg-type]
            pair = [box for box in (found[0][index], found[1][index]) if box is not None]
            if not pair:
                boxes.append(empty)
                continue
            starts = [min(box[axis].start for box in pair) for axis in range(prediction.ndim)]
            stops = [max(box[axis].stop for box in pair) for axis in range(prediction.ndim)]
            boxes.append(tuple(map(slice, starts, stops)))
        return boxes
    boxes = []
    for label in labels:
        where = np.nonzero(_mask(prediction, label) | _mask(reference, label))
        boxes.append(
            tuple(slice(int(i.min()), int(i.max()) + 1) for i in where) if where[0].size else empty
        )
    return boxes


def compute_metrics(
    prediction: np.ndarray,
    reference: np.ndarray,
    spacing: float | Sequence[float] | None = None,
    labels: Iterable[Target] | None = None,
    nsd_tolerance: float = 1.0,
    *,
    ignore: int | None = None,
) -> dict[Target, dict[str, float]]:
    """Overlap, volume and surface metrics of a predicted label map against a reference.

    Metrics per label (keys of :data:`METRIC_NAMES`): ``dice``, ``iou``, ``precision``,
    ``recall``, ``specificity``; ``volume_difference`` = predicted volume - reference volume in
    physical units (mm^3 in 3D, mm^2 in 2D with spacing in mm; signed, positive means
    over-segmentation); ``hd``, ``hd95``, ``assd`` in the units of ``spacing``; ``nsd`` in [0, 1].
    Surface metrics follow MONAI (see the module docstring).

    Empty masks never raise. A label painted where the reference lacks it scores dice 0 (it is
    scored whenever ``labels`` names it). For a label absent from both arrays (only when
    ``labels`` names it) the agreement is perfect: dice, iou, precision, recall and nsd are 1.0, hd, hd95, assd
    and volume_difference 0.0 (MONAI's ``DiceMetric(ignore_empty=False)`` convention; MONAI's
    distance metrics give NaN there). For a label present in only one array: dice, iou and nsd
    are 0.0 and hd, hd95, assd are ``inf`` (as MONAI, whose hd95 turns the infinities into NaN
    through ``torch.quantile``); precision is NaN when the prediction is
    empty and recall NaN when the reference is empty (0/0, MONAI's ``ConfusionMatrixMetric``
    convention), 0.0 otherwise. specificity is NaN only when the reference fills the image.

    Args:
        prediction: predicted integer label map, shape ``(*spatial)``, 2D or 3D, in nibabel index
            order. Float arrays with whole values are accepted.
        reference: reference label map of the same shape.
        spacing: voxel size per axis (or one number for all axes); ``None`` means 1.0.
        labels: targets to score: label values, or tuples of values scored as one region;
            ``None`` scores every non-zero label present in either array.
        nsd_tolerance: distance (in the units of ``spacing``) within which a surface voxel counts
            as correct for ``nsd``; MONAI's ``class_thresholds=[nsd_tolerance]``.
        ignore: reference value of voxels left out of every metric (see the module docstring).

    Returns:
        ``{target: {metric: value}}`` with Python floats, keyed as ``labels`` names them.

    Raises:
        ValueError: on shape mismatch, non-2D/3D input, bad spacing or tolerance.
        TypeError: when a label map holds non-integer values.

    Example:
        >>> ref = np.zeros((8, 8), int); ref[2:6, 2:6] = 1
        >>> compute_metrics(ref, ref)[1]["dice"]
        1.0
    """
    prediction, reference = _check_inputs(prediction, reference)
    spacing_array = _check_spacing(spacing, prediction.ndim)
    if not (math.isfinite(nsd_tolerance) and nsd_tolerance >= 0):
        raise ValueError(f"nsd_tolerance must be a finite number >= 0, got {nsd_tolerance!r}.")
    voxel_volume = float(np.prod(spacing_array))
    results: dict[Target, dict[str, float]] = {}
    targets = _resolve_labels(prediction, reference, labels, ignore)
    kept = _kept(reference, ignore)
    size = prediction.size if kept is None else int(np.count_nonzero(kept))
    for label, box in zip(targets, _label_boxes(prediction, reference, targets), strict=True):
        pred, ref = _mask(prediction[box], label), _mask(reference[box], label)
        if kept is not None:
            pred &= kept[box]
        values = _overlap_metrics(pred, ref, size, voxel_volume)
        values.update(distance_metrics(pred, ref, spacing_array, float(nsd_tolerance)))
        results[label] = {name: float(values[name]) for name in METRIC_NAMES}
    return results


def dice_per_label(
    prediction: np.ndarray, reference: np.ndarray, labels: Iterable[Target], *, ignore: int | None = None
) -> dict[Target, float]:
    """Dice per label in one pass over the arrays (no surface metrics); a fast path for training.

    A label absent from both arrays scores 1.0, one absent from only one array 0.0, as in
    :func:`compute_metrics`.

    Args:
        prediction: predicted integer label map, any shape.
        reference: reference label map of the same shape.
        labels: the targets to score (label values, or tuples of values scored as one region).
        ignore: reference value of voxels left out.

    Returns:
        ``{label: dice}``.

    Example:
        >>> dice_per_label(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]), [1, 2])
        {1: 0.6666666666666666, 2: 0.6666666666666666}
    """
    prediction, reference, targets = _flat_scored(prediction, reference, labels, ignore)
    if any(isinstance(target, tuple) for target in targets):
        counts = confusion_counts(prediction, reference, targets)
        return {t: _dice(c["TP"], c["n_pred"] + c["n_ref"]) for t, c in counts.items()}
    labels = [int(label) for label in targets]  # type: ignore[arg-type]
    if not labels:
        return {}
    low, high = min(labels), max(labels)
    if high - low > 65535:  # sparse label values: count one label at a time
        n_pred = {k: np.count_nonzero(prediction == k) for k in labels}
        n_ref = {k: np.count_nonzero(reference == k) for k in labels}
        n_both = {k: np.count_nonzero((prediction == k) & (reference == k)) for k in labels}
        low = 0
    else:  # one bincount per array; labels outside [low, high] go to an extra, ignored bin
        size = high - low + 2
        pred_bins = np.where((prediction >= low) & (prediction <= high), prediction - low, size - 1)
        ref_bins = np.where((reference >= low) & (reference <= high), reference - low, size - 1)
        n_pred = np.bincount(pred_bins, minlength=size)
        n_ref = np.bincount(ref_bins, minlength=size)
        n_both = np.bincount(pred_bins[pred_bins == ref_bins], minlength=size)
    result: dict[Target, float] = {}
    for label in labels:
        k = label - low
        result[label] = _dice(n_both[k], n_pred[k] + n_ref[k])
    return result


def _flat_scored(
    prediction: object, reference: object, labels: Iterable[Target] | None, ignore: int | None
) -> tuple[np.ndarray, np.ndarray, list[Target]]:
    """Both maps flattened, without the voxels the reference ignores, and the targets to score."""
    prediction = _as_label_map(prediction, "prediction").ravel()
    reference = _as_label_map(reference, "reference").ravel()
    if prediction.shape != reference.shape:
        raise ValueError(
            f"prediction and reference must have the same number of voxels, got "
            f"{prediction.size} and {reference.size}."
        )
    targets = _resolve_labels(prediction, reference, labels, ignore)
    if ignore is not None:
        kept = reference != ignore
        prediction, reference = prediction[kept], reference[kept]
    return prediction, reference, targets


def _dice(tp: int, total: int) -> float:
    """``2 tp / (n_pred + n_ref)``; 1.0 when both masks are empty."""
    return 1.0 if total == 0 else float(2.0 * tp / total)


def confusion_counts(
    prediction: np.ndarray, reference: np.ndarray, labels: Iterable[Target], *, ignore: int | None = None
) -> dict[Target, dict[str, int]]:
    """Voxel counts per target: ``TP``, ``FP``, ``FN``, ``TN``, ``n_pred``, ``n_ref``.

    Ignored voxels (reference value ``ignore``) are in none of the counts, as nnU-Net counts.

    Example:
        >>> confusion_counts(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]), [1, (1, 2)])[1]
        {'TP': 1, 'FP': 1, 'FN': 0, 'TN': 2, 'n_pred': 2, 'n_ref': 1}
    """
    prediction, reference, targets = _flat_scored(prediction, reference, labels, ignore)
    counts = {}
    for target in targets:
        pred, ref = _mask(prediction, target), _mask(reference, target)
        tp, n_pred, n_ref = (int(np.count_nonzero(m)) for m in (pred & ref, pred, ref))
        fp, fn = n_pred - tp, n_ref - tp
        counts[target] = dict(zip(COUNT_NAMES, (tp, fp, fn, prediction.size - tp - fp - fn, n_pred, n_ref),
                                  strict=True))
    return counts
