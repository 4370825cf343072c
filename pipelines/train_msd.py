"""Train a 3D U-Net on an MSD/nnU-Net folder, hold out a fifth of the cases, score them.

    python pipelines/train_msd.py data_samples/hippocampus --time-limit 120 --out runs/hippo
"""

import argparse

import medseg

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("data", help="an MSD/nnU-Net task folder (dataset.json, imagesTr/, labelsTr/)")
parser.add_argument("--out", default="runs/msd")
parser.add_argument("--time-limit", type=float, default=900, help="seconds of training")
parser.add_argument("--iterations-per-epoch", type=int, default=100)
args = parser.parse_args()

data = medseg.MSDDataset(args.data)                      # cases, labels and modality from dataset.json
pipe = medseg.Pipeline(data)                             # every default planned from the data
print(pipe.plan)
pipe.fit(time_limit=args.time_limit,                     # hold out 20% (grouped, seeded), train, checkpoint
         iterations_per_epoch=args.iterations_per_epoch, output_dir=args.out)
scores = pipe.evaluate()                                 # Dice of the held-out cases, on their own grid
dice = [value["dice"] for case in scores.values() for value in case.values()]
print(f"held-out mean Dice over {len(scores)} cases: {sum(dice) / len(dice):.4f}")
