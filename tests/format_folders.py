"""HC18 images and masks rewritten as a PASCAL VOC, a Cityscapes and a CamVid folder (and the plain
folder they came from), in each release's exact layout, for tests/test_formats.py.

The head becomes a class (VOC 15 "person"; Cityscapes "car", id 26 -> trainId 13, on "road",
id 7 -> trainId 0; CamVid "Car" on "Sky"), a band of ``border`` pixels along the head's contour
is void (VOC's 255 border; Cityscapes id 0 "unlabeled"; CamVid's Void colour) and the images are
scaled to different sizes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

ROOT = Path(__file__).resolve().parent.parent
HC18 = ROOT / "data_samples" / "hc18"
SCALES = (0.2, 0.24, 0.28)  # image sizes 160x108, 192x130, 224x151


def hc18_cases(source: Path = HC18, n: int | None = None, scales=SCALES, border: int = 2):
    """``[(name, grey (H, W) uint8, head (H, W) bool, void (H, W) bool)]`` of the first ``n`` images."""
    out = []
    for i, path in enumerate(sorted((source / "images").glob("*.png"))[:n]):
        image = Image.open(path).convert("L")
        mask = Image.open(source / "masks" / f"{path.stem}_mask.png").convert("L")
        size = (round(image.width * scales[i % len(scales)]), round(image.height * scales[i % len(scales)]))
        grey = np.asarray(image.resize(size, Image.BILINEAR))
        head = np.asarray(mask.resize(size, Image.NEAREST)) > 0
        void = ndimage.binary_dilation(head, iterations=border) & ~ndimage.binary_erosion(head, iterations=border)
        out.append((path.stem, grey, head, void))
    return out


def _save(array: np.ndarray, path: Path, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)


def _rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, axis=2)


def write_plain(root: Path, cases) -> Path:
    """nnU-Net v2 folder: imagesTr/ (RGB PNG), labelsTr/ 0 background, 1 head, 2 ignore."""
    for name, grey, head, void in cases:
        _save(_rgb(grey), root / "imagesTr" / f"{name}.png")
        _save(np.where(void, 2, head).astype(np.uint8), root / "labelsTr" / f"{name}.png")
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "R", "1": "G", "2": "B"}, "labels": {"background": 0, "head": 1, "ignore": 2},
        "numTraining": len(cases), "file_ending": ".png"}))
    return root


def _halves(cases, val_every: int = 4):
    return ([c for i, c in enumerate(cases) if i % val_every], [c for i, c in enumerate(cases) if not i % val_every])


def voc_id(index: int) -> str:
    return f"2007_{index:06d}"


def write_voc(root: Path, cases) -> Path:
    """``VOCdevkit/VOC2012``: JPEGImages, SegmentationClass/Object palette PNGs, ImageSets; returns VOC2012."""
    from medseg.io.formats.palettes import voc_colormap

    voc = root / "VOCdevkit" / "VOC2012"
    palette = voc_colormap().ravel().tolist()
    ids = {}
    for i, (name, grey, head, void) in enumerate(cases):
        ids[name] = voc_id(i + 1)
        _save(_rgb(grey), voc / "JPEGImages" / f"{ids[name]}.jpg", quality=95)
        for folder, value in (("SegmentationClass", 15), ("SegmentationObject", 1)):
            index = np.where(void, 255, np.where(head, value, 0)).astype(np.uint8)
            label = Image.frombytes("P", (index.shape[1], index.shape[0]), index.tobytes())
            label.putpalette(palette)
            (voc / folder).mkdir(parents=True, exist_ok=True)
            label.save(voc / folder / f"{ids[name]}.png")
    train, val = _halves(cases)
    sets = voc / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    for split, members in (("train", train), ("val", val)):
        (sets / f"{split}.txt").write_text("".join(f"{ids[c[0]]}\n" for c in members))
    (sets / "trainval.txt").write_text("".join(f"{ids[c[0]]}\n" for c in cases))
    return voc


def cityscapes_id(index: int, city: str) -> str:
    return f"{city}_{index:06d}_000019"


def write_cityscapes(root: Path, cases) -> Path:
    """leftImg8bit/{train,val}/CITY and gtFine labelIds/instanceIds/color; head = car on road."""
    train, val = _halves(cases)
    for split, members, city in (("train", train, "aachen"), ("val", val, "frankfurt")):
        for i, (_name, grey, head, void) in enumerate(members):
            case = cityscapes_id(i, city)
            _save(_rgb(grey), root / "leftImg8bit" / split / city / f"{case}_leftImg8bit.png")
            gt = root / "gtFine" / split / city
            _save(np.where(void, 0, np.where(head, 26, 7)).astype(np.uint8), gt / f"{case}_gtFine_labelIds.png")
            instances = np.where(void, 0, np.where(head, 26001, 7)).astype(np.uint16)
            _save(instances, gt / f"{case}_gtFine_instanceIds.png")
            colour = np.where(head[..., None], (0, 0, 142), (128, 64, 128)).astype(np.uint8)
            _save(colour, gt / f"{case}_gtFine_color.png")
    return root


CAMVID_SKY, CAMVID_CAR, CAMVID_VOID = (128, 128, 128), (64, 0, 128), (0, 0, 0)


def write_camvid(root: Path, cases) -> Path:
    """train/val/test + *_labels/ colour PNGs ``<name>_L.png`` and the 32-class class_dict.csv."""
    from medseg.io.formats.palettes import CAMVID_32

    rows = "".join(f"{name},{r},{g},{b}\n" for (r, g, b), name in CAMVID_32.items())
    root.mkdir(parents=True, exist_ok=True)
    (root / "class_dict.csv").write_text("name,r,g,b\n" + rows)
    splits = {"train": cases[2:], "val": cases[:1], "test": cases[1:2]}
    if len(cases) > 6:
        splits = {"train": cases[: len(cases) // 2], "val": cases[len(cases) // 2: 3 * len(cases) // 4],
                  "test": cases[3 * len(cases) // 4:]}
    for split, members in splits.items():
        for name, grey, head, void in members:
            case = f"0001TP_{name}"
            _save(_rgb(grey), root / split / f"{case}.png")
            colour = np.where(void[..., None], CAMVID_VOID, np.where(head[..., None], CAMVID_CAR, CAMVID_SKY))
            _save(colour.astype(np.uint8), root / f"{split}_labels" / f"{case}_L.png")
    return root
