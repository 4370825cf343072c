"""Train a 2D U-Net on image/mask pairs (PNG, JPEG, TIFF), keeping a subject's images together.

    python pipelines/train_2d_images.py data_samples/hc18 --time-limit 120 --out runs/hc18
"""

import argparse

import medseg

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("data", help="a folder with images/ and masks/ (or labels/)")
parser.add_argument("--out", default="runs/2d")
parser.add_argument("--time-limit", type=float, default=900)
parser.add_argument("--iterations-per-epoch", type=int, default=100)
parser.add_argument("--subject-pattern", default=r"^(\d+)_", help="regex whose group 1 is the subject")
args = parser.parse_args()

data = medseg.FolderDataset(args.data, group_pattern=args.subject_pattern)  # NNN_HC.png + NNN_HC_mask.png
pipe = medseg.Pipeline(data)                             # plans resolution, patch and batch for this machine
print(pipe.plan)
pipe.fit(time_limit=args.time_limit, iterations_per_epoch=args.iterations_per_epoch, output_dir=args.out)
scores = pipe.evaluate()                                 # held-out subjects, at the original resolution
dice = [value["dice"] for case in scores.values() for value in case.values()]
print(f"held-out mean Dice over {len(scores)} images: {sum(dice) / len(dice):.4f}")
