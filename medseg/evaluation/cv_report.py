"""The report that ends a cross-validation: tables, plots and overlays of every fold's cases,
and the summary :func:`medseg.evaluation.cross_validation.cross_validate` returns."""

from __future__ import annotations

import importlib.util
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..io import Dataset, read_image_file
from .confusion import folds_block
from .instance_scores import add_instance_table
from .metrics import summarize
from .report import OverlayCase, write_report

if TYPE_CHECKING:
    from ..pipeline import Pipeline

__all__ = ["can_plot", "check_overlays", "report", "summary"]


# --- helpers -------------------------------------------------------------------------------------


def _case_dice(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Mean Dice over labels per case (finite values), as the report ranks cases."""
    values: dict[str, list[float]] = {}
    for row in rows:
        dice = row.get("dice")
        if dice is not None and math.isfinite(float(dice)):
            values.setdefault(str(row["case"]), []).append(float(dice))
    return {case: float(np.mean(found)) for case, found in values.items()}


def _written_prediction(data: Dataset, path: Path, case: str, reference_shape: tuple[int, ...]) -> np.ndarray:
    """The prediction of ``case`` written at ``path``, read back as the dataset reads it: in the
    dataset's values, on the sample's grid (a format's own encoding decoded: Cityscapes trainIds,
    VOC/CamVid colours; COCO's results JSON, where an image without entries is all background)."""
    if hasattr(data, "prediction_values"):  # COCO: one results JSON per split
        return data.prediction_values(path).get(case, np.zeros(reference_shape, np.int32))
    if hasattr(data, "read_values"):  # a format's label file, (H, W) -> (x, y)
        return data.read_values(path).T
    return read_image_file(path)[0][0]


def _overlays(data: Dataset, results: Sequence[dict[str, Any]], output_dir: Path,
              count: int) -> dict[str, OverlayCase]:
    """Image, reference and written prediction of ``count`` cases spread from worst to best Dice."""
    dice = _case_dice([row for result in results for row in result["rows"]])
    ranked = sorted(dice, key=lambda case: (dice[case], case))
    if not ranked or count == 0:
        return {}
    if count == 1:
        chosen = [ranked[(len(ranked) - 1) // 2]]
    else:
        chosen = [ranked[round(i * (len(ranked) - 1) / (count - 1))] for i in range(count)]
    where = {case: output_dir / f"fold_{result['fold']}" / file
             for result in results for case, file in result["predictions"].items()}
    overlays = {}
    for case in dict.fromkeys(chosen):
        sample = data.load(case)
        prediction = _written_prediction(data, where[case], case, reference_shape=sample.label.shape)
        reference = sample.label if data.label_spec is None else data.label_spec.decode(sample.label)
        overlays[case] = OverlayCase(sample.image, reference, prediction)  # both in the dataset's values
    return overlays


def summary(results: Sequence[dict[str, Any]], output_dir: Path, report: Path) -> dict[str, Any]:
    """What :func:`~medseg.evaluation.cross_validation.cross_validate` returns for ``results``."""
    def mean_dice(rows: Sequence[Mapping[str, Any]]) -> dict[int, float]:
        return {label: stats["dice"]["mean"] for label, stats in summarize(rows).items()}

    rows = [row for result in results for row in result["rows"]]
    return {
        "folds": len(results),
        "cases": len({row["case"] for row in rows}),
        "mean_dice": mean_dice(rows),
        "fold_mean_dice": {result["fold"]: mean_dice(result["rows"]) for result in results},
        "output_dir": output_dir,
        "splits": output_dir / "cv.json",
        "report": report,
    }


def can_plot() -> bool:
    """Whether matplotlib is there to draw the report's figures."""
    return importlib.util.find_spec("matplotlib") is not None


def check_overlays(overlays: int) -> None:
    """Refuse an ``overlays`` count other than 0..3."""
    if isinstance(overlays, bool) or not isinstance(overlays, int) or not 0 <= overlays <= 3:
        raise ValueError(f"overlays must be 0, 1, 2 or 3 (cases drawn), got {overlays!r}.")


def report(pipe: Pipeline, results: Sequence[dict[str, Any]], output_dir: Path, overlays: int) -> dict[str, Any]:
    """Write ``output_dir/report`` for the folds' ``results`` and return their :func:`summary`."""
    plots = can_plot()
    if not plots:
        warnings.warn("matplotlib is missing: the report has tables only "
                      "(pip install 'medseg[report]' for plots).", stacklevel=3)
    instances = getattr(pipe, "is_instance", False)  # rows of the semantic classes plus instance scores
    spec = pipe.instance_spec if instances else pipe.plan.label_spec
    written = write_report(
        output_dir / "report",
        [row for result in results for row in result["rows"]],
        histories={result["fold"]: result["history"] for result in results},
        overlays=_overlays(pipe.data, results, output_dir, overlays if plots and not instances else 0),
        title=f"{len(results)}-fold cross-validation",
        plots=plots,
        label_names=spec.scored,  # rows are keyed by dataset value
        dataset=folds_block(results, spec),  # mean IoU of the summed confusion matrices
    )
    if instances:
        add_instance_table(written[-1], [row for result in results for row in result["rows"]], spec.scored)
    return summary(results, output_dir, written[-1])
