"""Detection and instance networks built from torch and MONAI's torchvision-free detection parts:
RoIAlign, a feature pyramid, and Mask R-CNN in 2D and 3D."""
