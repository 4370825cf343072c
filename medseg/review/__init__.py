"""The correction loop, on files: the model proposes, a person corrects the cases it is least
sure of in 3D Slicer or ITK-SNAP, the corrections come back checked, and the model retrains.

Example:
    >>> from medseg import review                                        # doctest: +SKIP
    >>> review.init("runs/hippo", "scans/", "review/", data="Task04")    # doctest: +SKIP
    >>> review.next("review/", n=3)                                      # doctest: +SKIP
    >>> review.ingest("review/", ["review/corrected/hippocampus_101.seg.nrrd"])  # doctest: +SKIP
    >>> review.retrain("review/", "runs/hippo2", steps=200)              # doctest: +SKIP
"""

from .corrections import check_grid, check_values, read_correction
from .loop import format_next, ingest, init, next_cases
from .retrain import retrain, reviewed_dataset
from .state import ReviewState
from .uncertainty import case_uncertainty, mean_entropy, voxel_entropy

next = next_cases  # noqa: A001 - the loop's step names: init, next, ingest, retrain

__all__ = [
    "ReviewState",
    "case_uncertainty",
    "check_grid",
    "check_values",
    "format_next",
    "ingest",
    "init",
    "mean_entropy",
    "next",
    "next_cases",
    "read_correction",
    "retrain",
    "reviewed_dataset",
    "voxel_entropy",
]
