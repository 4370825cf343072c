"""Predict every scan of a folder with a trained run; labels are written in each scan's geometry.

    python pipelines/predict_folder.py runs/hippo data_samples/hippocampus/imagesTr --out predictions/
"""

import argparse

import medseg

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("run", help="a folder written by `medseg train` or Pipeline.save")
parser.add_argument("scans", help="a scan file or a folder of scans")
parser.add_argument("--out", default="predictions")
parser.add_argument("--mirror", action="store_true", help="mirroring test-time augmentation")
args = parser.parse_args()

pipe = medseg.Pipeline.load(args.run)                    # JSON config + weights-only checkpoint
if args.mirror:
    pipe.inference = medseg.InferenceConfig(**{**pipe.inference.to_dict(), "mirror": True})
written = pipe.predict(args.scans, output_dir=args.out)  # one label file per case, same format and geometry
print(f"wrote {len(written)} label maps to {args.out}")
