"""The encoded instance label: instances and their classes in one integer map.

Every instance is its own label value, so medseg's label machinery (nearest resampling, crops,
patch sampling, augmentation, the preprocessing cache's per-value foreground locations) carries
instances unchanged. With ``K`` classes including the background, instance ``n`` (1..N) of class
``c`` (1..K-1) is stored as::

    value = (n - 1) * (K - 1) + c        c = (value - 1) % (K - 1) + 1,  n = (value - 1) // (K - 1) + 1

0 is the background and :data:`~medseg.io.labels.IGNORE_INDEX` (-1) an ignored voxel. With one
foreground class (``K = 2``) the encoded map is the instance map itself.

Example (``K = 3``, instance 1 of class 2 and instance 2 of class 1):
    >>> encode(np.array([0, 7, 7, 9, -1]), {7: 2, 9: 1}, 3).tolist()
    [0, 2, 2, 3, -1]
    >>> instances, classes = decode(np.array([0, 2, 2, 3, -1]), 3)
    >>> instances.tolist(), classes
    ([0, 1, 1, 2, -1], {1: 2, 2: 1})
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy import ndimage

from ..io.labels import IGNORE_INDEX

__all__ = ["CONNECTIVITY", "class_map", "components", "decode", "encode", "label_dtype"]

CONNECTIVITY = ("full", "face")
"""``"full"``: neighbours share a face, an edge or a corner (8 in 2D, 26 in 3D); ``"face"``: a
face only (4 in 2D, 6 in 3D)."""


def label_dtype(label: np.ndarray) -> type:
    """The narrowest signed type holding every value of ``label`` (int8, int16 or int32), e.g.
    for an encoded instance label whose values exceed int16 (a label of 40000 needs int32)."""
    label = np.asarray(label)
    largest = max(abs(int(label.max(initial=0))), abs(int(label.min(initial=0))))
    return np.int8 if largest < 128 else np.int16 if largest < 32768 else np.int32


def _check_classes(num_classes: int) -> int:
    if int(num_classes) != num_classes or num_classes < 2:
        raise ValueError(f"num_classes={num_classes!r}: instances need K >= 2 classes (background included).")
    return int(num_classes)


def _check_ignore(array: np.ndarray, what: str) -> None:
    negative = np.unique(array[array < 0])
    bad = [int(v) for v in negative if v != IGNORE_INDEX]
    if bad:
        raise ValueError(f"{what}: negative values {bad[:5]}; only {IGNORE_INDEX} (ignore) may be negative.")


def encode(instance_map: np.ndarray, classes: Mapping[int, int] | None, num_classes: int) -> np.ndarray:
    """An instance map (0 background, any positive ids, -1 ignore) -> the encoded label (int32).

    Args:
        instance_map: ``(*spatial)`` integer ids.
        classes: ``{id: class index 1..K-1}`` for the map's ids (extra ids are ignored);
            ``None``: every instance is class 1.
        num_classes: K, background included.

    Returns:
        ``(*spatial)`` int32; the ids renumbered 1..N in ascending id order.

    Raises:
        ValueError: naming the id or class when an id has no class, a class lies outside
            1..K-1, K < 2, or the map holds negative values other than -1.
    """
    num_classes = _check_classes(num_classes)
    instance_map = np.asarray(instance_map)
    if not np.issubdtype(instance_map.dtype, np.integer):
        if not np.array_equal(instance_map, np.round(instance_map)):
            raise ValueError("encode: instance ids must be whole numbers.")
    instance_map = instance_map.astype(np.int64, copy=False)
    _check_ignore(instance_map, "encode")
    ids = np.unique(instance_map[instance_map > 0])
    if classes is None:
        per_id = np.ones(len(ids), np.int64)
    else:
        missing = [int(i) for i in ids if int(i) not in classes]
        if missing:
            raise ValueError(f"encode: instance ids {missing[:10]} have no class in `classes`; give every id one.")
        per_id = np.asarray([int(classes[int(i)]) for i in ids], np.int64)
    outside = sorted({int(c) for c in per_id if not 0 < c < num_classes})
    if outside:
        raise ValueError(f"encode: class indices {outside} lie outside 1..{num_classes - 1} (K={num_classes}).")
    values = np.arange(len(ids), dtype=np.int64) * (num_classes - 1) + per_id
    if values.size and values.max() > np.iinfo(np.int32).max:
        raise ValueError(f"encode: {len(ids)} instances of {num_classes - 1} classes exceed the int32 range.")
    out = np.zeros(instance_map.shape, np.int32)
    inside = instance_map > 0
    out[inside] = values[np.searchsorted(ids, instance_map[inside])]
    out[instance_map == IGNORE_INDEX] = IGNORE_INDEX
    return out


def decode(encoded: np.ndarray, num_classes: int) -> tuple[np.ndarray, dict[int, int]]:
    """The encoded label -> ``(instance map, {id: class index})``.

    The ids are 1..N in ascending encoded value (the instance order of :func:`encode`; a patch
    missing some instances is renumbered without gaps); -1 stays -1. The map is int32.
    """
    num_classes = _check_classes(num_classes)
    encoded = np.asarray(encoded).astype(np.int64, copy=False)
    _check_ignore(encoded, "decode")
    values = np.unique(encoded[encoded > 0])
    out = np.zeros(encoded.shape, np.int32)
    inside = encoded > 0
    out[inside] = np.searchsorted(values, encoded[inside]) + 1
    out[encoded == IGNORE_INDEX] = IGNORE_INDEX
    classes = {n + 1: int((v - 1) % (num_classes - 1) + 1) for n, v in enumerate(values.tolist())}
    return out, classes


def class_map(encoded: np.ndarray, num_classes: int) -> np.ndarray:
    """The semantic class indices of an encoded label (0 background, 1..K-1, -1 kept)."""
    num_classes = _check_classes(num_classes)
    encoded = np.asarray(encoded).astype(np.int64, copy=False)
    out = np.where(encoded > 0, (encoded - 1) % (num_classes - 1) + 1, encoded)
    return out.astype(np.int8 if num_classes < 128 else np.int16)


def components(class_map: np.ndarray, num_classes: int, connectivity: str = "full") -> np.ndarray:
    """Each connected component of each class is an instance: semantic map -> encoded (int32).

    Instances are numbered class by class (class 1 first), within a class in
    :func:`scipy.ndimage.label`'s order (the first voxel of each component in C order).

    Args:
        class_map: ``(*spatial)`` class indices 0..K-1, -1 ignored (kept; it separates components).
        num_classes: K, background included.
        connectivity: ``"full"`` (8/26 neighbours) or ``"face"`` (4/6).

    Raises:
        ValueError: naming the value for an unknown connectivity or a class outside 0..K-1.
    """
    num_classes = _check_classes(num_classes)
    if connectivity not in CONNECTIVITY:
        raise ValueError(f"connectivity={connectivity!r}: expected one of {list(CONNECTIVITY)}.")
    class_map = np.asarray(class_map).astype(np.int64, copy=False)
    _check_ignore(class_map, "components")
    outside = sorted(int(c) for c in np.unique(class_map) if c >= num_classes)
    if outside:
        raise ValueError(f"components: class indices {outside} lie outside 0..{num_classes - 1} (K={num_classes}).")
    structure = ndimage.generate_binary_structure(class_map.ndim, class_map.ndim if connectivity == "full" else 1)
    instances = np.zeros(class_map.shape, np.int64)
    classes: dict[int, int] = {}
    for c in range(1, num_classes):
        labelled, count = ndimage.label(class_map == c, structure=structure)
        if count:
            start = len(classes)
            instances[labelled > 0] = labelled[labelled > 0] + start
            classes.update({start + n: c for n in range(1, count + 1)})
    instances[class_map == IGNORE_INDEX] = IGNORE_INDEX
    return encode(instances, classes, num_classes)
