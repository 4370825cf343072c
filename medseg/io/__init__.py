"""Reading and writing cases with their exact geometry."""

from .dataset_json import read_dataset_json, write_dataset_json
from .datasets import (
    CaseFiles,
    Dataset,
    FolderDataset,
    MSDDataset,
    find_images,
    load_image,
    open_dataset,
)
from .files import atomic_path, case_id_of, check_case_id, full_suffix
from .instances import InstanceDataset, as_instances, read_instances, write_instances
from .labels import IGNORE_INDEX, LabelSpec
from .readers import (
    READERS,
    Image2DIO,
    ImageIO,
    NiftiIO,
    NumpyIO,
    SimpleITKIO,
    io_for,
    output_suffix,
    read_image_file,
    write_label_file,
)
from .sample import Geometry, Sample

__all__ = [
    "READERS",
    "CaseFiles",
    "Dataset",
    "FolderDataset",
    "IGNORE_INDEX",
    "Geometry",
    "Image2DIO",
    "ImageIO",
    "InstanceDataset",
    "LabelSpec",
    "MSDDataset",
    "NiftiIO",
    "NumpyIO",
    "Sample",
    "SimpleITKIO",
    "as_instances",
    "atomic_path",
    "case_id_of",
    "check_case_id",
    "find_images",
    "full_suffix",
    "io_for",
    "load_image",
    "open_dataset",
    "output_suffix",
    "read_dataset_json",
    "read_image_file",
    "read_instances",
    "write_dataset_json",
    "write_instances",
    "write_label_file",
]
