"""The correction loop (medseg.review and `medseg review`) on a tiny hippocampus run."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from scipy.stats import entropy

import medseg
from medseg import review
from medseg.cli import main
from medseg.io import Sample, load_image
from medseg.preprocessing import preprocess

SAMPLES = Path(__file__).resolve().parent.parent / "data_samples" / "hippocampus"
TINY = {"features": (4, 8), "patch_size": (40, 56, 40), "batch_size": 1, "pool_kernels": [[2, 2, 2]],
        "conv_kernels": [[3, 3, 3], [3, 3, 3]]}


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    """A run trained 3 steps on 6 cases (4 held out), 4 unlabelled scans and a review of them."""
    root = tmp_path_factory.mktemp("review")
    data = medseg.MSDDataset(SAMPLES)
    ids = data.case_ids
    pipe = medseg.Pipeline(data, plan=TINY, device="cpu", cache_dir=root / "cache")
    pipe.fit(ids[:6], ids[6:10], epochs=1, iterations_per_epoch=3, output_dir=root / "run")
    unlabeled = root / "unlabeled"
    unlabeled.mkdir()
    for case in ids[10:14]:
        shutil.copy(data.files(case).images[0], unlabeled / f"{case}.nii.gz")
    state = review.init(root / "run", unlabeled, root / "rev", data=SAMPLES)
    return {"root": root, "ids": ids, "state": state, "unlabeled": unlabeled}


def _hash(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_init_ranks_by_the_entropy_of_the_mirrored_mean_softmax(loop):
    state, rev = loop["state"], loop["root"] / "rev"
    assert state.held_out == loop["ids"][6:10] and state.train == loop["ids"][:6]
    rows = (rev / "queue.csv").read_text().splitlines()
    ranked = [line.split(",")[1] for line in rows[1:]]
    scores = [float(line.split(",")[2]) for line in rows[1:]]
    assert sorted(ranked) == loop["ids"][10:14] and scores == sorted(scores, reverse=True)
    # one case by hand: the mirror images through the network, flipped back, averaged, entropy; the
    # plan mirrors the hippocampus along axis 0 only (head and tail keep their order along 1 and 2)
    pipe = medseg.Pipeline.load(loop["root"] / "run", device="cpu")
    case = ranked[0]
    image, geometry = load_image([loop["unlabeled"] / f"{case}.nii.gz"])
    prepared = preprocess(Sample(case, image, geometry), pipe.preprocessing).image
    assert pipe.plan.mirror_axes == (0,)
    flips = [(), (1,)]  # channel axis first
    mean = np.mean([np.flip(pipe.predict_probabilities(np.flip(prepared, f).copy()), f) for f in flips], axis=0)
    assert scores[0] == pytest.approx(float(entropy(mean, axis=0).mean()), rel=1e-4)
    proposal = nib.load(str(rev / "labels" / "original" / f"{case}.nii.gz"))
    np.testing.assert_allclose(proposal.affine, nib.load(str(loop["unlabeled"] / f"{case}.nii.gz")).affine, atol=1e-5)


def test_next_prints_slicer_and_itksnap_commands(loop, capsys):
    rev = loop["root"] / "rev"
    assert main(["review", "next", str(rev), "--n", "2"]) == 0
    out = capsys.readouterr().out
    first = loop["state"].pending()[0]
    assert f"#1 {first}" in out and out.count("itksnap -g ") == 2
    assert "Slicer --python-code" in out and "slicer.util.loadSegmentation(" in out
    assert str((rev / "labels" / "original" / f"{first}.nii.gz").resolve()) in out


def _reference(loop, case: str) -> nib.Nifti1Image:
    return nib.load(str(SAMPLES / "labelsTr" / f"{case}.nii.gz"))


def _write_itk(array: np.ndarray, like: nib.Nifti1Image, path: Path, **meta: str) -> Path:
    """``array`` (nibabel order) with the geometry of ``like`` through SimpleITK (LPS)."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.T))
    reference = sitk.ReadImage(str(like.get_filename()))
    image.CopyInformation(reference)
    for key, value in meta.items():
        image.SetMetaData(key, value)
    sitk.WriteImage(image, str(path))
    return path


def test_ingest_accepts_nifti_nrrd_and_slicer_seg_nrrd(loop, tmp_path):
    rev, (a, b, c) = loop["root"] / "rev", loop["ids"][10:13]
    nifti = tmp_path / f"{a}.nii.gz"
    shutil.copy(SAMPLES / "labelsTr" / f"{a}.nii.gz", nifti)
    nrrd = _write_itk(np.asarray(_reference(loop, b).dataobj), _reference(loop, b), tmp_path / f"{b}-label.nrrd")
    # 3D Slicer: segment "1" (label value 1), and a segment named after class Posterior drawn with value 7
    ref = np.asarray(_reference(loop, c).dataobj).astype(np.uint8)
    slicer = np.where(ref == 2, 7, ref)  # Posterior drawn with label value 7, named after its class
    seg = _write_itk(slicer, _reference(loop, c), tmp_path / f"{c}.seg.nrrd",
                     Segment0_ID="Segment_1", Segment0_Name="1", Segment0_LabelValue="1", Segment0_Layer="0",
                     Segment1_ID="Segment_2", Segment1_Name="posterior", Segment1_LabelValue="7", Segment1_Layer="0")
    records = review.ingest(rev, [nifti, nrrd, seg])
    assert [r["case"] for r in records] == [a, b, c]
    final = np.asarray(nib.load(str(rev / "labels" / "final" / f"{c}.nii.gz")).dataobj)
    np.testing.assert_array_equal(final, ref)  # value 7 of the segment named Posterior became 2
    proposal = np.asarray(nib.load(str(rev / "labels" / "original" / f"{a}.nii.gz")).dataobj)
    dice = [2 * np.sum((proposal == v) & (ref_a == v)) / (np.sum(proposal == v) + np.sum(ref_a == v))
            for ref_a in [np.asarray(_reference(loop, a).dataobj)] for v in (1, 2)]
    assert records[0]["proposal_dice"] == pytest.approx(float(np.mean(dice)), abs=1e-6)
    # two layers (overlapping segments, Slicer 5): Anterior in layer 0, Posterior in layer 1, both value 1
    layered = sitk.GetImageFromArray(np.stack([(ref == 1).T, (ref == 2).T], axis=-1).astype(np.uint8), isVector=True)
    layered.CopyInformation(sitk.ReadImage(str(_reference(loop, c).get_filename())))
    for key, value in {"Segment0_Name": "Anterior", "Segment0_LabelValue": "1", "Segment0_Layer": "0",
                       "Segment1_Name": "Posterior", "Segment1_LabelValue": "1", "Segment1_Layer": "1"}.items():
        layered.SetMetaData(key, value)
    (tmp_path / "layers").mkdir()
    sitk.WriteImage(layered, str(tmp_path / "layers" / f"{c}.seg.nrrd"))
    review.ingest(rev, [tmp_path / "layers" / f"{c}.seg.nrrd"])
    np.testing.assert_array_equal(np.asarray(nib.load(str(rev / "labels" / "final" / f"{c}.nii.gz")).dataobj), ref)
    state = review.ReviewState.load(rev)
    assert set(state.corrections) == {a, b, c} and state.corrections[a]["ingested_at"].endswith("+00:00")
    assert [r["case"] for r in review.next(rev, n=5)] == [loop["ids"][13]]


def _moved(like: nib.Nifti1Image, path: Path, *, shift=(0, 0, 0), flip: bool = False, crop: bool = False,
           values: np.ndarray | None = None) -> Path:
    data = np.asarray(like.dataobj) if values is None else values
    affine = like.affine.copy()
    affine[:3, 3] += shift
    if flip:
        affine[:, 0] *= -1
    nib.save(nib.Nifti1Image(data[:-1] if crop else data, affine), str(path))
    return path


@pytest.mark.parametrize("change, reason", [
    ({"shift": (2.0, 0, 0)}, "origin .* lies 2 mm from the scan"),
    ({"flip": True}, "direction .* differs from the scan's .*flipped or rotated"),
    ({"crop": True}, r"shape \[\d+, \d+, \d+\] differs from the scan's"),
    ({"values": "relabel"}, r"label values \[3\] are no class of the run"),
])
def test_ingest_refuses_a_file_off_its_scan_with_the_reason(loop, tmp_path, change, reason):
    rev, case = loop["root"] / "rev", loop["ids"][13]
    ref = _reference(loop, case)
    if change.get("values") == "relabel":
        change = {"values": np.where(np.asarray(ref.dataobj) == 2, 3, np.asarray(ref.dataobj)).astype(np.uint8)}
    path = _moved(ref, tmp_path / f"{case}.nii.gz", **change)
    with pytest.raises(medseg.DataError, match=f"{case}.nii.gz: refused for case '{case}': {reason}"):
        review.ingest(rev, [path])
    assert not (rev / "labels" / "final" / f"{case}.nii.gz").exists()
    assert main(["review", "ingest", str(rev), str(path)]) == 2


def test_retrain_writes_run2_keeps_run_and_prints_both_scores(loop, capsys):
    root = loop["root"]
    case = loop["ids"][10]
    if case not in review.ReviewState.load(root / "rev").corrections:
        review.ingest(root / "rev", [SAMPLES / "labelsTr" / f"{case}.nii.gz"])
    before = _hash(root / "run")
    assert main(["review", "retrain", str(root / "rev"), "--out", str(root / "run2"), "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert _hash(root / "run") == before
    state = review.ReviewState.load(root / "rev")
    result = state.rounds[-1]
    assert f"RUN  {root / 'run'}: {result['dice_run']:.4f}" in out
    assert f"RUN2 {(root / 'run2').resolve()}: {result['dice_run2']:.4f}" in out
    assert result["trained_on"] == 6 + len(state.corrections) and result["held_out"] == 4
    run2, run = (medseg.Pipeline.load(root / r, device="cpu") for r in ("run2", "run"))
    assert sum(h["steps"] for h in run2.history) == 2  # fine-tuned 2 steps from RUN's weights
    assert any(not np.array_equal(p.detach(), q.detach()) for p, q in zip(run.network.parameters(),
                                                                            run2.network.parameters()))
    # init again with RUN2 ranks only what is left
    again = review.init(root / "run2", loop["unlabeled"], root / "rev")
    assert set(again.pending()) == set(loop["ids"][10:14]) - set(state.corrections)
    assert main(["review", "retrain", str(root / "rev"), "--out", str(root / "run")]) == 2


def test_fold_ensemble_scores_disagreement_zero_for_identical_folds(loop):
    import copy

    import torch

    from medseg.inference import predict_probabilities
    from medseg.review import case_uncertainty

    pipe = medseg.Pipeline.load(loop["root"] / "run", device="cpu")
    image = np.random.default_rng(0).normal(size=(1, 40, 56, 40)).astype(np.float32)
    pipe.ensemble = [copy.deepcopy(pipe.network)]
    _, same, method = case_uncertainty(pipe, image)
    assert method == "fold-disagreement" and same == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        for p in pipe.ensemble[0].parameters():
            p.add_(torch.randn_like(p) * 0.5)
    probabilities, spread, _ = case_uncertainty(pipe, image)
    members = [predict_probabilities(n, image, roi_size=(40, 56, 40), config=pipe.inference) for n in
               (pipe.network, pipe.ensemble[0])]
    mean = (members[0] + members[1]) / 2
    expected = entropy(mean, axis=0).mean() - np.mean([entropy(m, axis=0).mean() for m in members])
    assert spread == pytest.approx(float(expected), rel=1e-4) and spread > 1e-3
    np.testing.assert_allclose(probabilities, mean, atol=1e-6)


def test_a_benchmark_format_dataset_is_refused_naming_the_format(loop, tmp_path, capsys):
    """Corrections are plain label files; a VOC folder's labels decode through the format: refused
    at init (before predicting) and at retrain, naming the format."""
    from tests.format_folders import hc18_cases, write_voc

    voc = write_voc(tmp_path / "voc", hc18_cases(n=4))
    root = loop["root"]
    assert main(["review", "init", str(root / "run"), str(loop["unlabeled"]), "--out", str(tmp_path / "rev"),
                 "--data", str(voc)]) == 2
    assert f"--data {voc}: a voc folder; `medseg review` (init, retrain) works on plain" in capsys.readouterr().err
    assert not (tmp_path / "rev" / "review.json").exists() and not (tmp_path / "rev" / "labels").exists()
    state = review.ReviewState.load(root / "rev")
    state.data = str(voc)  # a review whose data became a format folder: retrain refuses too
    with pytest.raises(medseg.errors.DataError, match="a voc folder"):
        review.reviewed_dataset(state)
