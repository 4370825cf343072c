"""Readers and writers keep arrays and geometry; datasets check their cases."""

from __future__ import annotations

import gzip
import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medseg.errors import DataError
from medseg.io import (
    FolderDataset,
    Geometry,
    MSDDataset,
    find_images,
    io_for,
    open_dataset,
    read_image_file,
    write_label_file,
)
from tests.conftest import SAMPLES


def test_nifti_write_read_keeps_oblique_anisotropic_geometry(tmp_path, oblique_affine):
    labels = np.random.default_rng(0).integers(0, 3, (9, 7, 5))
    path = write_label_file(labels, Geometry(oblique_affine, labels.shape), tmp_path / "case.nii.gz")
    image = nib.load(str(path))
    np.testing.assert_allclose(image.affine, oblique_affine, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(image.dataobj), labels)
    data, geometry = read_image_file(path)
    assert data.shape == (1, 9, 7, 5)
    np.testing.assert_allclose(geometry.spacing, (0.7, 1.1, 3.0), atol=1e-5)


@pytest.mark.parametrize("suffix", [".mha", ".nrrd"])
def test_itk_write_read_keeps_origin_spacing_direction(tmp_path, oblique_affine, suffix):
    labels = np.random.default_rng(1).integers(0, 4, (6, 8, 5))
    path = write_label_file(labels, Geometry(oblique_affine, labels.shape), tmp_path / f"case{suffix}")
    image = sitk.ReadImage(str(path))
    assert image.GetSize() == (6, 8, 5)
    np.testing.assert_allclose(image.GetSpacing(), (0.7, 1.1, 3.0), atol=1e-6)
    # LPS origin: x and y of the RAS translation flip sign
    np.testing.assert_allclose(image.GetOrigin(), (12.5, -40.25, 7.75), atol=1e-6)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    expected = np.diag([-1, -1, 1]) @ oblique_affine[:3, :3] / np.array([0.7, 1.1, 3.0])
    np.testing.assert_allclose(direction, expected, atol=1e-6)
    data, geometry = read_image_file(path)
    np.testing.assert_array_equal(data[0], labels)
    np.testing.assert_allclose(geometry.affine, oblique_affine, atol=1e-5)


def test_nibabel_and_simpleitk_read_the_same_case_identically():
    path = SAMPLES / "hippocampus" / "imagesTr" / "hippocampus_001.nii.gz"
    data_nib, geo_nib = read_image_file(path)
    data_itk, geo_itk = io_for(path.with_suffix(".mha")).read(path)  # SimpleITK reads NIfTI too
    np.testing.assert_array_equal(data_nib, data_itk)
    np.testing.assert_allclose(geo_nib.affine, geo_itk.affine, atol=1e-5)
    np.testing.assert_allclose(geo_nib.affine[:3, 3], (1, 1, 1))  # documented for this data


def test_png_and_numpy_round_trips(tmp_path):
    labels = np.random.default_rng(2).integers(0, 3, (20, 13))
    png = write_label_file(labels, Geometry.from_spacing(labels.shape), tmp_path / "a.png")
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(png))).shape == (13, 20)  # rows are y
    np.testing.assert_array_equal(read_image_file(png)[0][0], labels)
    volume = np.random.default_rng(3).integers(0, 3, (4, 5, 6))
    for name in ("b.npy", "c.npz"):
        path = write_label_file(volume, Geometry.from_spacing(volume.shape, (2, 2, 2)), tmp_path / name)
        np.testing.assert_array_equal(read_image_file(path)[0][0], volume)
    assert read_image_file(tmp_path / "c.npz")[1].spacing == (2.0, 2.0, 2.0)


def test_dicom_series_folder_reads_as_one_volume(tmp_path):
    volume = (np.arange(4 * 5 * 3).reshape(3, 5, 4) * 10).astype(np.int16)  # (z, y, x)
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((0.8, 0.8, 2.5))
    series = tmp_path / "series"
    series.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(volume.shape[0]):
        slice_ = image[:, :, z]
        slice_.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.1")
        slice_.SetMetaData("0020|0032", f"0\\0\\{2.5 * z}")
        slice_.SetMetaData("0020|0013", str(z))
        slice_.SetMetaData("0020|0037", "1\\0\\0\\0\\1\\0")
        writer.SetFileName(str(series / f"{z}.dcm"))
        writer.Execute(slice_)
    data, geometry = read_image_file(series)
    assert data.shape == (1, 4, 5, 3)
    np.testing.assert_array_equal(data[0], np.transpose(volume))
    np.testing.assert_allclose(geometry.spacing, (0.8, 0.8, 2.5), atol=1e-4)


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    labels = np.ones((4, 4, 4), dtype=np.uint8)
    path = write_label_file(labels, Geometry.from_spacing(labels.shape), tmp_path / "keep.nii.gz")
    before = path.read_bytes()
    reader = io_for(path)

    def broken(array, geometry, target):
        target.write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(reader, "write", broken)
    with pytest.raises(OSError, match="disk full"):
        write_label_file(labels * 2, Geometry.from_spacing(labels.shape), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.nii.gz"]


def test_msd_dataset_reads_labels_and_cases():
    data = MSDDataset(SAMPLES / "hippocampus")
    assert len(data) == 30 and data.labels == {0: "background", 1: "Anterior", 2: "Posterior"}
    sample = data.load("hippocampus_003")  # its label is stored as float32 0/1/2
    assert sample.image.dtype == np.float32 and np.issubdtype(sample.label.dtype, np.integer)
    assert set(np.unique(sample.label)) == {0, 1, 2}


def test_folder_dataset_matches_mask_suffix_and_groups():
    data = FolderDataset(SAMPLES / "hc18", group_pattern=r"^(\d+)_")
    assert data.cases["010_2HC"].label.name == "010_2HC_mask.png"
    assert data.group_of("014_3HC") == "014"
    sample = data.load("001_HC")
    assert sample.image.shape == (1, 800, 540) and set(np.unique(sample.label)) == {0, 1}


def _nifti(path, array, affine=None):
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))


def _folder(tmp_path, image, label, label_affine=None):
    (tmp_path / "images").mkdir(parents=True)
    (tmp_path / "labels").mkdir()
    _nifti(tmp_path / "images" / "a.nii.gz", image)
    _nifti(tmp_path / "labels" / "a_seg.nii.gz", label, label_affine)
    return FolderDataset(tmp_path, classes={0: "bg", 1: "fg"})


def test_bad_inputs_raise_errors_that_name_the_file(tmp_path):
    image = np.random.default_rng(0).random((6, 6, 6)).astype(np.float32)
    label = np.zeros((6, 6, 6), np.uint8)
    with pytest.raises(DataError, match=r"a_seg\.nii\.gz: label grid .* differs"):
        _folder(tmp_path / "shape", image, np.zeros((6, 6, 5), np.uint8)).load("a")
    shifted = np.eye(4)
    shifted[0, 3] = 5.0
    with pytest.raises(DataError, match=r"a_seg\.nii\.gz: label grid"):
        _folder(tmp_path / "geometry", image, label, shifted).load("a")
    with pytest.raises(DataError, match=r"label values \[3\] are not classes"):
        _folder(tmp_path / "values", image, label + 3 * (np.arange(6) == 2)[:, None, None].astype(np.uint8)).load("a")
    nan = image.copy()
    nan[1, 2, 3] = np.nan
    with pytest.raises(DataError, match=r"a\.nii\.gz: image holds 1 NaN or Inf"):
        _folder(tmp_path / "nan", nan, label).load("a")
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(gzip.compress(b"not a nifti file at all" * 20))
    with pytest.raises(DataError, match=r"corrupt\.nii\.gz: could not be read"):
        read_image_file(corrupt)
    with pytest.raises(DataError, match=r"missing\.nii\.gz: file not found"):
        read_image_file(tmp_path / "missing.nii.gz")


def test_dataset_json_listing_missing_files_is_an_error(tmp_path):
    (tmp_path / "imagesTr").mkdir()
    _nifti(tmp_path / "imagesTr" / "x_001.nii.gz", np.zeros((3, 3, 3), np.float32))
    meta = {"labels": {"0": "bg", "1": "fg"}, "modality": {"0": "CT"},
            "training": [{"image": "./imagesTr/x_001.nii.gz", "label": "./labelsTr/x_001.nii.gz"}]}
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"dataset\.json lists 1 file\(s\) that are not there.*labelsTr/x_001"):
        open_dataset(tmp_path)


def test_nnunet_v2_layout_with_channels(tmp_path):
    for folder in ("imagesTr", "labelsTr", "imagesTs"):
        (tmp_path / folder).mkdir()
    for case in ("c1", "c2"):
        for channel in range(2):
            _nifti(tmp_path / "imagesTr" / f"{case}_{channel:04d}.nii.gz", np.full((4, 4, 4), channel, np.float32))
        _nifti(tmp_path / "labelsTr" / f"{case}.nii.gz", np.ones((4, 4, 4), np.uint8))
    _nifti(tmp_path / "imagesTs" / "t1_0000.nii.gz", np.zeros((4, 4, 4), np.float32))
    _nifti(tmp_path / "imagesTs" / "t1_0001.nii.gz", np.zeros((4, 4, 4), np.float32))
    meta = {"labels": {"background": 0, "organ": 1}, "channel_names": {"0": "T1", "1": "T2"}, "file_ending": ".nii.gz"}
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    data = open_dataset(tmp_path)
    assert data.case_ids == ["c1", "c2"] and data.labels == {0: "background", 1: "organ"}
    assert data.modality == ("T1", "T2") and list(data.test_cases) == ["t1"]
    sample = data.load("c2")
    assert sample.image.shape == (2, 4, 4, 4) and sample.image[1].min() == 1.0
    assert list(find_images(tmp_path / "imagesTs", channels=2)) == ["t1"]
    assert list(find_images(tmp_path / "imagesTs")) == ["t1_0000", "t1_0001"]  # nothing declared: files
