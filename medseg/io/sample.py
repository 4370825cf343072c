"""One case: its image, its label and the geometry that places it in the world."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Geometry", "Sample"]

# LPS (ITK, DICOM) <-> RAS (NIfTI, nibabel): flip the first two world axes.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True, eq=False)
class Geometry:
    """Where a voxel grid lies in the world.

    Args:
        affine: the 4x4 voxel-to-world matrix in RAS millimetres, as nibabel gives it. For a 2D
            image the third voxel axis is a single slice of thickness 1.
        shape: the spatial shape of the grid, in nibabel's index order (x, y[, z]).

    ``spacing``, ``origin`` and ``direction`` are derived from the affine; ``from_itk`` and
    ``to_itk`` convert to and from SimpleITK's LPS convention without loss.
    """

    affine: np.ndarray
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        affine = np.asarray(self.affine, dtype=np.float64)
        if affine.shape != (4, 4):
            raise ValueError(f"Geometry affine must be 4x4, got shape {affine.shape}.")
        if len(self.shape) not in (2, 3):
            raise ValueError(f"Geometry shape must have 2 or 3 axes, got {self.shape}.")
        affine.setflags(write=False)
        object.__setattr__(self, "affine", affine)
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size in mm along each array axis."""
        norms = np.linalg.norm(self.affine[:3, :3], axis=0)
        return tuple(float(s) for s in norms[: self.ndim])

    @classmethod
    def from_spacing(cls, shape: Sequence[int], spacing: Sequence[float] | None = None) -> Geometry:
        """A grid at the world origin, axis-aligned, with the given spacing (default 1 mm)."""
        spacing = list(spacing) if spacing is not None else [1.0] * len(shape)
        diagonal = spacing + [1.0] * (3 - len(spacing)) + [1.0]
        return cls(np.diag(diagonal), tuple(shape))

    @classmethod
    def from_itk(
        cls,
        origin: Sequence[float],
        spacing: Sequence[float],
        direction: Sequence[float],
        shape: Sequence[int],
    ) -> Geometry:
        """Build from SimpleITK's origin, spacing and flat direction (LPS)."""
        n = len(origin)
        lps = np.eye(4)
        lps[:n, :n] = np.asarray(direction, dtype=np.float64).reshape(n, n) * np.asarray(spacing)
        lps[:n, 3] = origin
        return cls(_LPS_TO_RAS @ lps, tuple(shape))

    def to_itk(self) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
        """Origin, spacing and flat direction for SimpleITK (LPS)."""
        n = self.ndim
        lps = _LPS_TO_RAS @ self.affine
        spacing = np.linalg.norm(lps[:n, :n], axis=0)
        direction = lps[:n, :n] / spacing
        return (
            tuple(float(v) for v in lps[:n, 3]),
            tuple(float(v) for v in spacing),
            tuple(float(v) for v in direction.ravel()),
        )

    def same_grid(self, other: Geometry, atol: float = 1e-4) -> bool:
        """Whether two geometries describe the same grid (shape and affine within ``atol``)."""
        return self.shape == other.shape and bool(np.allclose(self.affine, other.affine, atol=atol))

    def to_dict(self) -> dict[str, Any]:
        return {"affine": self.affine.tolist(), "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Geometry:
        return cls(np.asarray(data["affine"]), tuple(data["shape"]))


@dataclass(frozen=True, eq=False)
class Sample:
    """One case.

    Args:
        id: the case id.
        image: float32 array ``(C, *spatial)``.
        label: integer array ``(*spatial)`` or ``None``.
        geometry: the grid the arrays lie on.
        history: what preprocessing did, ``(step, record)`` pairs, so it can be undone.
    """

    id: str
    image: np.ndarray
    geometry: Geometry
    label: np.ndarray | None = None
    history: tuple[tuple[Any, Any], ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.image.ndim != self.geometry.ndim + 1:
            raise ValueError(
                f"Case {self.id!r}: image must be (C, *spatial) with {self.geometry.ndim} spatial "
                f"axes, got shape {self.image.shape}."
            )
        if self.label is not None and self.label.shape != self.image.shape[1:]:
            raise ValueError(
                f"Case {self.id!r}: label shape {self.label.shape} differs from image spatial "
                f"shape {self.image.shape[1:]}."
            )

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.image.shape[1:])

    def replace(self, **changes: Any) -> Sample:
        """A copy with some fields replaced (samples are never changed in place)."""
        return dataclasses.replace(self, **changes)
