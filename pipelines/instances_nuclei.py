"""Nuclei instance segmentation: train on part of an image (a volume), score the part not trained on.

    python pipelines/instances_nuclei.py --architecture bordercore --epochs 8 --out runs/nuclei
    python pipelines/instances_nuclei.py --architecture maskrcnn --dims 3

2D: the DSB 2018 image (data_samples/nuclei/2d, 125 nuclei) cut into 16 tiles of 128 x 128; the
4 tiles on the anti-diagonal are held out, the other 12 train. 3D: the synthetic volume
(data_samples/nuclei/3d, 51 nuclei) cut in two along its second axis; the first half trains.
Scores over all held-out nuclei: matching accuracy at IoU 0.5, TP / (TP + FP + FN) (the "AP" of
the DSB 2018 and StarDist papers; one-to-one matching), and panoptic quality.
"""

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

import medseg
from medseg.evaluation.instance_folders import evaluate_instances

NUCLEI = Path(__file__).resolve().parent.parent / "data_samples" / "nuclei"


def tiles_2d(work: Path, size: int = 128) -> None:
    """16 PNG tiles into work/{train,test}/{images,labels}; the anti-diagonal ones are test."""
    image, label = (np.array(Image.open(NUCLEI / "2d" / kind / "dsb2018.png")) for kind in ("images", "labels"))
    for row in range(0, image.shape[0], size):
        for col in range(0, image.shape[1], size):
            part = "test" if row + col == image.shape[0] - size else "train"
            for kind, array in (("images", image), ("labels", label)):
                folder = work / part / kind
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(array[row:row + size, col:col + size]).save(folder / f"tile_{row:03d}_{col:03d}.png")


def halves_3d(work: Path) -> None:
    """The volume cut in two along axis 1: work/train (first half), work/test (second)."""
    for kind in ("images", "labels"):
        volume = nib.load(NUCLEI / "3d" / kind / "synthetic.nii.gz")
        data, middle = np.asarray(volume.dataobj), volume.shape[1] // 2
        for part, start, stop in (("train", 0, middle), ("test", middle, volume.shape[1])):
            affine = volume.affine.copy()
            affine[1, 3] += start  # the half keeps its place in the volume
            (work / part / kind).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(data[:, start:stop], affine), work / part / kind / f"half_{part}.nii.gz")


parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--architecture", default="bordercore", choices=("bordercore", "maskrcnn"))
parser.add_argument("--dims", default="2,3", help="2, 3 or 2,3")
parser.add_argument("--epochs", type=int, default=8)
parser.add_argument("--iterations-per-epoch", type=int, default=25)
parser.add_argument("--batch-size", type=int, default=None, help="default: planned")
parser.add_argument("--out", default="runs/nuclei")
args = parser.parse_args()

for dims in args.dims.split(","):
    work = Path(args.out) / f"{dims}d_{args.architecture}"
    (tiles_2d if dims == "2" else halves_3d)(work / "data")
    pipe = medseg.Pipeline(work / "data" / "train", task="instance", architecture=args.architecture,
                           plan={"batch_size": args.batch_size} if args.batch_size else None, cache_dir=work / "cache")
    pipe.fit(epochs=args.epochs, iterations_per_epoch=args.iterations_per_epoch, val_fraction=0,
             output_dir=work / "run")                    # every training tile (half) trains
    pipe.predict(work / "data" / "test" / "images", work / "predictions")  # instance maps + <case>.json (+ COCO)
    scores = evaluate_instances(work / "predictions", work / "data" / "test")  # = medseg evaluate --task instance
    pooled = scores["summary"]["pooled"][0.5]                                  # TP, FP, FN over all held-out nuclei
    print(f"{dims}D {args.architecture}: held-out matching accuracy (AP) at IoU 0.5 {pooled['accuracy']:.4f}, "
          f"panoptic quality {pooled['panoptic_quality']:.4f} over {pooled['tp'] + pooled['fn']} nuclei")
