"""The border-core representation of instances (Isensee et al.'s nnU-Net route to nuclei and cells).

A semantic network cannot tell two touching nuclei of one class apart, but it can learn three
classes per object: its *core* and a thin *border* around it. :func:`to_bordercore` turns an
encoded instance label (see ``medseg.instances`` and the convention
``value = (n - 1) * (K - 1) + c``) into such a semantic map, with one core class per foreground
class and a single border class ``K``; :func:`from_bordercore` labels the cores of a (predicted)
map as instances and grows each into the border voxels nearest to it in millimetres.

Every voxel of an instance within ``border_mm`` of the instance's outside (background, another
instance or an ignored voxel; distances between voxel centres, spacing-aware) is border, and so is
every voxel touching another instance (full neighbourhood), so the cores of two instances never
touch, not even at a corner, whatever ``border_mm``. The image edge is not an outside: an object
cut by the edge keeps its core up to it.

Example:
    >>> encoded = np.zeros((1, 8), dtype=np.int32)
    >>> encoded[0, :4], encoded[0, 4:] = 1, 2           # two touching instances of class 1 (K = 2)
    >>> to_bordercore(encoded, 2, (1.0, 1.0)).tolist()
    [[1, 1, 1, 2, 2, 1, 1, 1]]
    >>> from_bordercore(to_bordercore(encoded, 2, (1.0, 1.0)), 2, (1.0, 1.0)).tolist()
    [[1, 1, 1, 1, 2, 2, 2, 2]]
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from ..errors import look_up_option
from ..io.labels import IGNORE_INDEX, LabelSpec
from .encoding import CONNECTIVITY, class_map, encode

__all__ = ["bordercore_spec", "from_bordercore", "to_bordercore"]

_EPS = 1e-6  # mm: a distance equal to border_mm (sqrt(2), 3 x 0.7...) counts as inside it


# -- checks -------------------------------------------------------------------------------------
def _check_classes(num_classes: int) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2 (background and at least one class, "
                         f"like Plan.num_classes), got {num_classes!r}.")
    return int(num_classes)


def _check_spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    values = tuple(float(s) for s in np.ravel(np.asarray(spacing, dtype=float)))
    if len(values) != ndim or not all(np.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing must hold one positive size in mm per axis of the {ndim}D label map, "
                         f"got {spacing!r}; pass the case's Geometry.spacing.")
    return values


def _check_integer(array: np.ndarray, name: str, low: int, high: int | None) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim < 1 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must be an integer label map, got dtype {array.dtype} and shape "
                         f"{array.shape}; cast it with .astype(np.int32).")
    if array.size and (array.min() < low or (high is not None and array.max() > high)):
        bad = np.unique(array[(array < low) | (array > high if high is not None else False)])[:8]
        allowed = f"{low}..{high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} holds values {bad.tolist()} outside {allowed}.")
    return array


# -- instances -> border-core --------------------------------------------------------------------
_MAX_SHIFTS = 32  # past this many neighbour offsets, one distance transform per instance box is cheaper


def _offsets(spacing: tuple[float, ...], border_mm: float) -> list[tuple[tuple[int, ...], bool]] | None:
    """Half of the neighbour offsets that decide the border (the other half is their negation),
    each with whether it only separates instances (outside ``border_mm`` but in the full
    neighbourhood); ``None`` when there are more than ``_MAX_SHIFTS``."""
    reach = [max(int(np.floor((border_mm + _EPS) / s)), 1) for s in spacing]
    if np.prod([2 * r + 1 for r in reach]) > 2000:   # far more than _MAX_SHIFTS within border_mm
        return None
    offsets = []
    for offset in itertools.product(*(range(-r, r + 1) for r in reach)):
        if next((o for o in offset if o), 0) <= 0:   # zero, or the negation of a kept offset
            continue
        if np.sqrt(sum((o * s) ** 2 for o, s in zip(offset, spacing))) <= border_mm + _EPS:
            offsets.append((offset, False))
        elif max(abs(o) for o in offset) == 1:
            offsets.append((offset, True))
    return offsets if len(offsets) <= _MAX_SHIFTS else None


def _pair(offset: Sequence[int], shape: Sequence[int]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Slices ``a``, ``b`` such that ``x[b]`` is ``x[a]`` moved by ``offset``."""
    a = tuple(slice(max(-o, 0), n - max(o, 0)) for o, n in zip(offset, shape))
    b = tuple(slice(max(o, 0), n - max(-o, 0)) for o, n in zip(offset, shape))
    return a, b


def _border_by_shifts(encoded: np.ndarray, offsets: list[tuple[tuple[int, ...], bool]]) -> np.ndarray:
    """Border voxels: a voxel of another value within ``border_mm``, or of another instance in
    the full neighbourhood, compared one offset (of :func:`_offsets`) at a time over the map."""
    border = np.zeros(encoded.shape, dtype=bool)
    inside = encoded > 0
    for offset, instances_only in offsets:
        a, b = _pair(offset, encoded.shape)
        differ = encoded[a] != encoded[b]
        if instances_only:
            differ &= inside[a] & inside[b]
        border[a] |= differ & inside[a]
        border[b] |= differ & inside[b]
    return border


def _padded(box: tuple[slice, ...], pad: Sequence[int], shape: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(max(s.start - p, 0), min(s.stop + p, n)) for s, p, n in zip(box, pad, shape))


def _border_of(crop: np.ndarray, value: int, spacing: tuple[float, ...], border_mm: float) -> np.ndarray:
    """The border voxels of instance ``value`` inside ``crop`` (a padded box around it)."""
    mask = crop == value
    border = mask & (ndimage.distance_transform_edt(mask, sampling=spacing) <= border_mm + _EPS)
    others = (crop > 0) & ~mask
    if others.any():
        touching = ndimage.binary_dilation(others, structure=np.ones((3,) * crop.ndim, dtype=bool))
        border |= mask & touching
    return border


def _border_by_boxes(encoded: np.ndarray, spacing: tuple[float, ...], border_mm: float) -> np.ndarray:
    """The same border, from one distance transform per instance, in its box padded by ``border_mm``."""
    positive = np.maximum(encoded, 0)
    if positive.max(initial=0) > 4 * positive.size:   # sparse ids: compact them for find_objects
        _, inverse = np.unique(np.concatenate(([0], positive.ravel())), return_inverse=True)
        positive = inverse[1:].reshape(positive.shape)
    pad = [int(np.floor(border_mm / s)) + 1 for s in spacing]
    border = np.zeros(encoded.shape, dtype=bool)
    for index, box in enumerate(ndimage.find_objects(positive)):
        if box is not None:
            region = _padded(box, pad, encoded.shape)
            border[region] |= _border_of(positive[region], index + 1, spacing, border_mm)
    return border


def to_bordercore(encoded: np.ndarray, num_classes: int, spacing: Sequence[float],
                  border_mm: float | None = None) -> np.ndarray:
    """Border-core labels of an encoded instance map.

    Args:
        encoded: ``(*spatial)`` encoded instance label (0 background, ``(n - 1) * (K - 1) + c``
            for instance ``n`` of class ``c``, ``-1`` ignored), 2D or 3D.
        num_classes: ``K``, the semantic classes including background.
        spacing: voxel size in mm per axis.
        border_mm: how far from its outside a voxel of an instance is border (between voxel
            centres); default the largest spacing, i.e. one voxel along the coarsest axis and
            ``spacing_max / spacing_i`` voxels along finer axes.

    Returns:
        ``(*spatial)`` int8 (int16 past 127 classes): 0 background, ``c`` the core of an instance
        of class ``c`` (1..K-1), ``K`` border, ``-1`` where ``encoded`` is ``-1``.

    Raises:
        ValueError: on a non-integer map, values below -1, a bad ``num_classes``, ``spacing`` or
            ``border_mm``.
    """
    num_classes = _check_classes(num_classes)
    encoded = _check_integer(encoded, "encoded", IGNORE_INDEX, None)
    spacing = _check_spacing(spacing, encoded.ndim)
    border_mm = max(spacing) if border_mm is None else float(border_mm)
    if not np.isfinite(border_mm) or border_mm <= 0:
        raise ValueError(f"border_mm must be a positive width in mm, got {border_mm!r} "
                         f"(None: the largest spacing, {max(spacing)} mm).")
    out = class_map(encoded, num_classes)   # int8 up to K = 127, so the border value K fits
    if not (encoded > 0).any():
        return out
    offsets = _offsets(spacing, border_mm)
    if offsets is None:
        out[_border_by_boxes(encoded, spacing, border_mm)] = num_classes
    else:
        out[_border_by_shifts(encoded, offsets)] = num_classes
    return out


# -- border-core -> instances --------------------------------------------------------------------
def _label_cores(labels: np.ndarray, num_classes: int, structure: np.ndarray,
                 min_voxels: int) -> tuple[np.ndarray, list[int]]:
    """Instance ids 1..N of the kept cores, class by class (like
    :func:`~medseg.instances.encoding.components`), and the class of each id (``classes[0]`` = 0)."""
    ids = np.zeros(labels.shape, dtype=np.int64)
    classes = [0]
    for c in range(1, num_classes):
        components, count = ndimage.label(labels == c, structure=structure)
        if not count:
            continue
        keep = np.bincount(components.ravel(), minlength=count + 1) >= max(min_voxels, 1)
        keep[0] = False
        lookup = np.zeros(count + 1, dtype=np.int64)
        lookup[keep] = np.arange(len(classes), len(classes) + int(keep.sum()))
        classes += [c] * int(keep.sum())
        ids[components > 0] = lookup[components[components > 0]]
    return ids, classes


def _nearest_core(ids: np.ndarray, spacing: tuple[float, ...], where: np.ndarray) -> np.ndarray:
    """For the voxels ``where`` is true, the id of the core voxel nearest in mm (straight line)."""
    indices = ndimage.distance_transform_edt(ids == 0, sampling=spacing, return_distances=False,
                                             return_indices=True)
    return ids[tuple(index[where] for index in indices)]


def _fill_from_neighbours(grown: np.ndarray, todo: np.ndarray) -> None:
    """Give each ``todo`` voxel, in place, the largest id among its full neighbourhood,
    step by step while that reaches new voxels (a neighbour in the foreground is in the same
    connected region)."""
    footprint = np.ones((3,) * grown.ndim, dtype=bool)
    while todo.any():
        where = np.nonzero(todo)
        box = tuple(slice(max(int(w.min()) - 1, 0), int(w.max()) + 2) for w in where)
        sub, left = grown[box], todo[box]                    # views: written through
        near = ndimage.grey_dilation(np.where(left, 0, sub), footprint=footprint)
        take = left & (near > 0)
        if not take.any():
            return
        sub[take] = near[take]
        left[take] = False


def _grow(ids: np.ndarray, pool: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """Ids with every ``pool`` voxel given the nearest core (in mm, straight line) of its connected
    (full neighbourhood) foreground region; 0 in a region without a core. A voxel whose nearest
    core lies in another region (across background) grows from its assigned neighbours instead."""
    if not ids.any() or not pool.any():
        return ids
    full = ndimage.generate_binary_structure(ids.ndim, ids.ndim)
    regions, count = ndimage.label((ids > 0) | pool, structure=full)
    region_of_core = np.zeros(int(ids.max()) + 1, dtype=regions.dtype)
    region_of_core[ids[ids > 0]] = regions[ids > 0]
    has_core = np.zeros(count + 1, dtype=bool)
    has_core[region_of_core[1:]] = True
    nearest, in_region = _nearest_core(ids, spacing, pool), regions[pool]
    agrees = region_of_core[nearest] == in_region
    grown = ids.copy()
    grown[pool] = np.where(agrees, nearest, 0)
    todo = np.zeros(ids.shape, dtype=bool)
    todo[pool] = ~agrees & has_core[in_region]
    _fill_from_neighbours(grown, todo)
    return grown


def from_bordercore(labels: np.ndarray, num_classes: int, spacing: Sequence[float], min_voxels: int = 0,
                    *, connectivity: str = "face") -> np.ndarray:
    """Instances of a border-core map: cores labelled, then grown into the border.

    The cores of each class are labelled as connected components; cores smaller than
    ``min_voxels`` are dropped (their voxels join the border). Each border voxel then goes to the
    core nearest to it in mm (straight line) among the cores of its connected foreground region
    (cores and border, full neighbourhood: a border voxel reaches a core through a diagonal
    step); border regions without a core stay background. An instance's class is its core's.
    Thin objects whose border covers them (under about two ``border_mm`` wide) have no core
    and are lost; an object pinched to a one-voxel neck splits in two.

    Args:
        labels: ``(*spatial)`` border-core map (0 background, 1..K-1 cores, ``K`` border, ``-1``
            ignored), e.g. the argmax of a network trained on :func:`to_bordercore` targets.
        num_classes: ``K``, the semantic classes including background.
        spacing: voxel size in mm per axis.
        min_voxels: cores with fewer voxels are not instances.
        connectivity: "face" (4/6-neighbourhood, default) or "full" (8/26): what connects core
            voxels into one instance. "face" keeps two cores apart
            when a predicted border between them is a one-voxel diagonal staircase, which
            "full" would merge; the cores :func:`to_bordercore` makes never touch either way.

    Returns:
        ``(*spatial)`` int32 encoded instance map, ids 1..N class by class, within a class in
        :func:`scipy.ndimage.label`'s order (like :func:`~medseg.instances.encoding.components`);
        ``-1`` where ``labels`` is ``-1``.

    Raises:
        ValueError: on values outside -1..K, a bad ``num_classes``, ``spacing``, ``min_voxels``
            or ``connectivity``.
    """
    num_classes = _check_classes(num_classes)
    labels = _check_integer(labels, "labels", IGNORE_INDEX, num_classes)
    spacing = _check_spacing(spacing, labels.ndim)
    connectivity = look_up_option(connectivity, CONNECTIVITY, argument="connectivity")
    if isinstance(min_voxels, bool) or not isinstance(min_voxels, (int, np.integer)) or min_voxels < 0:
        raise ValueError(f"min_voxels must be an integer >= 0, got {min_voxels!r}.")
    structure = ndimage.generate_binary_structure(labels.ndim, 1 if connectivity == "face" else labels.ndim)
    ids, classes = _label_cores(labels, num_classes, structure, int(min_voxels))
    pool = (labels == num_classes) | ((labels > 0) & (labels < num_classes) & (ids == 0))
    ids = _grow(ids, pool, spacing)
    # the encoded value of each id: encode() on the ids themselves, then a lookup
    table = encode(np.arange(len(classes)), dict(enumerate(classes)), num_classes).astype(np.int32)
    encoded = table[ids]
    encoded[labels == IGNORE_INDEX] = IGNORE_INDEX
    return encoded


def bordercore_spec(spec: LabelSpec) -> LabelSpec:
    """The classes of the border-core targets of ``spec``'s instance classes.

    Args:
        spec: the semantic classes (K of them, background first; not a region spec).

    Returns:
        A spec with values ``0..K``: background, ``"core <name>"`` per foreground class, and
        ``"border"``; ``ignore`` is :data:`~medseg.io.labels.IGNORE_INDEX` when ``spec`` has one
        (the border-core map marks ignored voxels with it).

    Example:
        >>> bordercore_spec(LabelSpec((0, 1), ("background", "nucleus"))).names
        ('background', 'core nucleus', 'border')
    """
    if spec.regions:
        raise ValueError(f"bordercore_spec: {spec.region_names} are regions (sigmoid outputs); border-core "
                         "targets need ordinary classes. Drop the regions from the label spec.")
    names = ("background", *(f"core {name}" for name in spec.names[1:]), "border")
    return LabelSpec(values=tuple(range(spec.num_classes + 1)), names=names,
                     ignore=None if spec.ignore is None else IGNORE_INDEX)
