"""The class tables of the benchmark layouts: VOC's colour map, Cityscapes' label ids and CamVid's colours.

Each table is as the dataset's official release and scripts have it: the PASCAL VOC devkit's
``VOClabelcolormap`` (bits of the index spread over R, G and B), Cityscapes'
``cityscapesscripts/helpers/labels.py`` (id, trainId, colour) and CamVid's 32-class
``label_colors.txt`` with the 11-class grouping of Sturgess et al. (BMVC 2009) that SegNet and
most papers score.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "CAMVID_11",
    "CAMVID_32",
    "CAMVID_GROUPS",
    "CITYSCAPES_LABELS",
    "CITYSCAPES_TRAIN_NAMES",
    "VOC_CLASSES",
    "colours_to_index",
    "id_to_train_id",
    "train_id_to_id",
    "voc_colormap",
]

VOID = 255
"""The value of an ignored pixel in every table here (VOC's border, Cityscapes' ignored trainIds)."""

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


def voc_colormap(n: int = 256) -> np.ndarray:
    """``(n, 3)`` uint8: the VOC devkit's colour of each index (index 255, the void border, is
    (224, 224, 192))."""
    cmap = np.zeros((n, 3), dtype=np.uint8)
    for index in range(n):
        c, rgb = index, [0, 0, 0]
        for bit in range(8):
            for channel in range(3):
                rgb[channel] |= ((c >> channel) & 1) << (7 - bit)
            c >>= 3
        cmap[index] = rgb
    return cmap


# name, id, trainId, colour: cityscapesscripts/helpers/labels.py (trainId 255 is ignored)
CITYSCAPES_LABELS: tuple[tuple[str, int, int, tuple[int, int, int]], ...] = (
    ("unlabeled", 0, 255, (0, 0, 0)), ("ego vehicle", 1, 255, (0, 0, 0)),
    ("rectification border", 2, 255, (0, 0, 0)), ("out of roi", 3, 255, (0, 0, 0)),
    ("static", 4, 255, (0, 0, 0)), ("dynamic", 5, 255, (111, 74, 0)), ("ground", 6, 255, (81, 0, 81)),
    ("road", 7, 0, (128, 64, 128)), ("sidewalk", 8, 1, (244, 35, 232)), ("parking", 9, 255, (250, 170, 160)),
    ("rail track", 10, 255, (230, 150, 140)), ("building", 11, 2, (70, 70, 70)), ("wall", 12, 3, (102, 102, 156)),
    ("fence", 13, 4, (190, 153, 153)), ("guard rail", 14, 255, (180, 165, 180)),
    ("bridge", 15, 255, (150, 100, 100)), ("tunnel", 16, 255, (150, 120, 90)), ("pole", 17, 5, (153, 153, 153)),
    ("polegroup", 18, 255, (153, 153, 153)), ("traffic light", 19, 6, (250, 170, 30)),
    ("traffic sign", 20, 7, (220, 220, 0)), ("vegetation", 21, 8, (107, 142, 35)),
    ("terrain", 22, 9, (152, 251, 152)), ("sky", 23, 10, (70, 130, 180)), ("person", 24, 11, (220, 20, 60)),
    ("rider", 25, 12, (255, 0, 0)), ("car", 26, 13, (0, 0, 142)), ("truck", 27, 14, (0, 0, 70)),
    ("bus", 28, 15, (0, 60, 100)), ("caravan", 29, 255, (0, 0, 90)), ("trailer", 30, 255, (0, 0, 110)),
    ("train", 31, 16, (0, 80, 100)), ("motorcycle", 32, 17, (0, 0, 230)), ("bicycle", 33, 18, (119, 11, 32)),
)
CITYSCAPES_TRAIN_NAMES = tuple(name for name, _, train, _ in sorted(CITYSCAPES_LABELS, key=lambda r: r[2])
                               if train != VOID)

_ID_TO_TRAIN = np.full(256, VOID, dtype=np.uint8)  # every id not in the table (license plate -1) is void
for _name, _id, _train, _colour in CITYSCAPES_LABELS:
    _ID_TO_TRAIN[_id] = _train
_TRAIN_TO_ID = np.zeros(256, dtype=np.uint8)  # trainId -> id, as the official evaluation expects
for _name, _id, _train, _colour in CITYSCAPES_LABELS:
    if _train != VOID:
        _TRAIN_TO_ID[_train] = _id


def id_to_train_id(ids: np.ndarray) -> np.ndarray:
    """Cityscapes label ids (``*_gtFine_labelIds.png``) -> the 19 training ids, 255 ignored."""
    ids = np.asarray(ids)
    out = np.full(ids.shape, VOID, dtype=np.uint8)
    inside = (ids >= 0) & (ids < 256)
    out[inside] = _ID_TO_TRAIN[ids[inside].astype(np.int64)]
    return out


def train_id_to_id(train_ids: np.ndarray) -> np.ndarray:
    """Training ids 0..18 -> Cityscapes label ids (what a ``labelIds`` prediction holds)."""
    return _TRAIN_TO_ID[np.asarray(train_ids).astype(np.int64) % 256]


# CamVid's label_colors.txt: colour -> name (the 32 classes)
CAMVID_32: dict[tuple[int, int, int], str] = {
    (64, 128, 64): "Animal", (192, 0, 128): "Archway", (0, 128, 192): "Bicyclist", (0, 128, 64): "Bridge",
    (128, 0, 0): "Building", (64, 0, 128): "Car", (64, 0, 192): "CartLuggagePram", (192, 128, 64): "Child",
    (192, 192, 128): "Column_Pole", (64, 64, 128): "Fence", (128, 0, 192): "LaneMkgsDriv",
    (192, 0, 64): "LaneMkgsNonDriv", (128, 128, 64): "Misc_Text", (192, 0, 192): "MotorcycleScooter",
    (128, 64, 64): "OtherMoving", (64, 192, 128): "ParkingBlock", (64, 64, 0): "Pedestrian",
    (128, 64, 128): "Road", (128, 128, 192): "RoadShoulder", (0, 0, 192): "Sidewalk",
    (192, 128, 128): "SignSymbol", (128, 128, 128): "Sky", (64, 128, 192): "SUVPickupTruck",
    (0, 0, 64): "TrafficCone", (0, 64, 64): "TrafficLight", (192, 64, 128): "Train", (128, 128, 0): "Tree",
    (192, 128, 192): "Truck_Bus", (64, 0, 64): "Tunnel", (192, 192, 0): "VegetationMisc", (0, 0, 0): "Void",
    (64, 192, 0): "Wall",
}
# the 11 classes of the papers (SegNet's order), each with the 32-class names it groups; Void is ignored
CAMVID_GROUPS: dict[str, tuple[str, ...]] = {
    "Sky": ("Sky",),
    "Building": ("Building", "Wall", "Archway", "Bridge", "Tunnel"),
    "Pole": ("Column_Pole", "TrafficCone"),
    "Road": ("Road", "LaneMkgsDriv", "LaneMkgsNonDriv"),
    "Sidewalk": ("Sidewalk", "ParkingBlock", "RoadShoulder"),
    "Tree": ("Tree", "VegetationMisc"),
    "SignSymbol": ("SignSymbol", "Misc_Text", "TrafficLight"),
    "Fence": ("Fence",),
    "Car": ("Car", "SUVPickupTruck", "Truck_Bus", "Train", "OtherMoving"),
    "Pedestrian": ("Pedestrian", "Child", "CartLuggagePram", "Animal"),
    "Bicyclist": ("Bicyclist", "MotorcycleScooter"),
}
CAMVID_11 = tuple(CAMVID_GROUPS)
_CAMVID_NAME_TO_CLASS = {name.lower(): index for index, members in enumerate(CAMVID_GROUPS.values())
                         for name in members}
# the 11-class names some releases use in class_dict.csv for the same groups
_CAMVID_ALIASES = {"pavement": "sidewalk", "sign_symbol": "signsymbol"}


def camvid_class_of(name: str) -> int:
    """The 11-class index of a CamVid class name (32-class or 11-class), :data:`VOID` for void
    and names outside the grouping."""
    key = name.strip().lower().replace(" ", "_")
    key = _CAMVID_ALIASES.get(key, key)
    if key in _CAMVID_NAME_TO_CLASS:
        return _CAMVID_NAME_TO_CLASS[key]
    for index, group in enumerate(CAMVID_GROUPS):
        if group.lower() == key:
            return index
    return VOID


def camvid_class_colours(colours: dict[tuple[int, int, int], str]) -> dict[int, tuple[int, int, int]]:
    """The colour a prediction of each 11-class index is written with: the table's colour of the
    group's first member present (Sky, Building, Column_Pole, Road...)."""
    by_name = {name.strip().lower().replace(" ", "_"): colour for colour, name in colours.items()}
    out = {}
    for index, (group, members) in enumerate(CAMVID_GROUPS.items()):
        for name in (*members, group, *[a for a, g in _CAMVID_ALIASES.items() if g == group.lower()]):
            if name.lower() in by_name:
                out[index] = by_name[name.lower()]
                break
    return out


def colours_to_index(rgb: np.ndarray, table: dict[tuple[int, int, int], int], default: int | None = None,
                     source: object = "image") -> np.ndarray:
    """``(H, W, 3)`` colours -> ``(H, W)`` values by ``table``; a colour not in it is ``default``.

    Raises:
        ValueError: naming ``source`` and a few colours when ``default`` is ``None`` and some
            colour is not in the table.
    """
    from ...errors import DataError

    rgb = np.asarray(rgb)[..., :3].astype(np.int64)
    keys = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    found, inverse = np.unique(keys, return_inverse=True)
    lookup = {(r << 16) | (g << 8) | b: v for (r, g, b), v in table.items()}
    unknown = [int(k) for k in found if int(k) not in lookup]
    if unknown and default is None:
        shown = [((k >> 16) & 255, (k >> 8) & 255, k & 255) for k in unknown[:5]]
        raise DataError(f"{source}: colours {shown} are not in the dataset's colour table "
                        f"({len(table)} colours); add them to class_dict.csv or fix the label image.")
    values = np.array([lookup.get(int(k), default) for k in found], dtype=np.int64)
    return values[inverse.reshape(keys.shape)]
