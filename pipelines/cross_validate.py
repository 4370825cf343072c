"""Cross-validate the planned pipeline on a dataset and write a report; rerun the same command to
resume a run that was stopped (finished folds are kept, the running one continues its checkpoint).

    python pipelines/cross_validate.py data_samples/hippocampus --folds 3 --time-limit 300 --out runs/cv
"""

import argparse

import medseg

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("data", help="an MSD/nnU-Net folder, or a folder with images/ and labels/ (or masks/)")
parser.add_argument("--folds", type=int, default=3)
parser.add_argument("--time-limit", type=float, default=600, help="seconds of training per fold")
parser.add_argument("--out", default="runs/cv")
args = parser.parse_args()

pipe = medseg.Pipeline(medseg.open_dataset(args.data))  # plans spacing, patch and network
summary = medseg.evaluation.cross_validate(pipe, args.folds, output_dir=args.out, time_limit=args.time_limit)
for label, dice in summary["mean_dice"].items():  # each case scored by the fold that left it out
    print(f"label {label}: mean Dice {dice:.4f}")
print(f"report: {summary['report']}; medseg.Pipeline.load({args.out!r}) loads the fold ensemble")
