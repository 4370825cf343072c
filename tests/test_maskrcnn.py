"""Mask R-CNN in 2D and 3D: targets, NMS, losses and gradients, overfitting, tiled inference."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from monai.data.box_utils import box_iou, non_max_suppression

from medseg.architectures import create_architecture
from medseg.architectures.detection.detections import batched_nms, nms
from medseg.architectures.detection.heads import level_of
from medseg.architectures.detection.maskrcnn import MaskRCNN
from medseg.architectures.detection.roi_heads import paired_iou
from medseg.architectures.detection.targets import instance_targets
from medseg.inference.detection import detect_instances, merge_tiles
from medseg.instances.boxes import boxes_from_instances, paste_masks
from medseg.instances.encoding import decode, encode
from medseg.losses import create_loss
from medseg.training import TrainingConfig, train

SMALL = {
    2: {"widths": (8, 16, 32, 64), "fpn_channels": 16, "rpn_pre_nms": 200, "rpn_post_nms": (64, 32),
        "roi_batch": 32, "head_width": 32, "mask_roi_size": 7},
    3: {"widths": (4, 8, 16), "fpn_levels": (1, 2), "fpn_channels": 16, "rpn_pre_nms": 200,
        "rpn_post_nms": (48, 24), "roi_batch": 64, "head_width": 32, "mask_roi_size": 6},
}
DISCS = {"centres": ((16, 16), (40, 20), (30, 46)), "radii": (8, 7, 9)}



def balls(shape, centres, radii, seed=0, noise=0.3):
    """A noisy image ``(1, *shape)`` with bright balls, and their instance map (first ball wins)."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape).astype(float) + 0.5
    image = rng.normal(0.0, noise, shape).astype(np.float32)
    instances = np.zeros(shape, np.int32)
    for n, (centre, radius) in enumerate(zip(centres, radii), 1):
        inside = sum((g - c) ** 2 for g, c in zip(grid, centre)) < radius**2
        instances[inside & (instances == 0)] = n
        image[inside] += 1.0
    return image[None], instances


def fit(net, image, label, steps, lr=2e-3, seed=0):
    torch.manual_seed(seed)
    x, y = torch.as_tensor(image)[None], torch.as_tensor(label)[None].long()
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr)
    net.train()
    for _ in range(steps):
        loss = net.training_loss(net(x), y, None)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net


def mask_iou(a, b):
    return np.logical_and(a, b).sum() / max(np.logical_or(a, b).sum(), 1)


def matched_ious(found, instances):
    """Per gt instance, the best (box IoU, mask IoU) over the detections (0, 0 when none)."""
    ids, gt_boxes = boxes_from_instances(instances)
    if len(found) == 0:
        return np.zeros((len(ids), 2))
    pasted, _, _ = paste_masks(found.boxes.numpy(), found.masks.numpy(), found.labels.numpy(),
                               found.scores.numpy(), instances.shape)
    boxes = box_iou(torch.as_tensor(gt_boxes), found.boxes).numpy()
    result = []
    for i, n in enumerate(ids):
        best = int(boxes[i].argmax())
        result.append((boxes[i, best], mask_iou(pasted == best + 1, instances == n)))
    return np.array(result)


# ----------------------------------------------------------------------------------- parts


@pytest.mark.parametrize("d", [2, 3])
def test_instance_targets_decode_like_encoding_and_boxes_like_boxes_from_instances(d):
    rng = np.random.default_rng(d)
    shape = (20, 24) if d == 2 else (10, 12, 8)
    instance_map = rng.integers(0, 6, shape).astype(np.int32)
    instance_map[(slice(0, 3),)] = -1
    classes = {1: 2, 2: 1, 3: 2, 4: 1, 5: 2}
    encoded = encode(instance_map, classes, num_classes=3)
    (target,) = instance_targets(torch.as_tensor(encoded)[None], num_classes=3)
    decoded, decoded_classes = decode(encoded, 3)
    ids, boxes = boxes_from_instances(decoded)
    np.testing.assert_array_equal(target.boxes.numpy(), boxes)
    assert target.labels.tolist() == [decoded_classes[int(i)] for i in ids] == [2, 1, 2, 1, 2]
    assert int(target.ignore.sum()) == (instance_map == -1).sum()


def test_nms_keeps_what_monai_keeps():
    rng = np.random.default_rng(0)
    for d in (2, 3):
        low = rng.uniform(0, 20, (60, d))
        boxes = torch.as_tensor(np.concatenate([low, low + rng.uniform(2, 10, (60, d))], 1), dtype=torch.float32)
        scores = torch.as_tensor(rng.uniform(size=60), dtype=torch.float32)
        assert nms(boxes, scores, 0.3).tolist() == non_max_suppression(boxes, scores, 0.3).tolist()
        assert nms(boxes, scores, 0.3, max_keep=5).tolist() == non_max_suppression(boxes, scores, 0.3, 5).tolist()
    # two identical boxes in different groups both stay
    box = torch.tensor([[0.0, 0, 4, 4], [0, 0, 4, 4]])
    assert sorted(batched_nms(box, torch.tensor([0.9, 0.8]), torch.tensor([1, 2]), 0.5).tolist()) == [0, 1]
    assert batched_nms(box, torch.tensor([0.9, 0.8]), torch.tensor([1, 1]), 0.5).tolist() == [0]


def test_pyramid_level_by_box_size_and_paired_iou():
    sides = torch.tensor([8.0, 40, 64, 127, 128, 200, 1000])
    boxes = torch.stack([torch.zeros_like(sides), torch.zeros_like(sides), sides, sides], 1)
    # strides 4, 8, 16: the finest level up to 16 cells (64 voxels), then one level per doubling
    assert level_of(boxes, (4, 8, 16)).tolist() == [0, 0, 1, 1, 2, 2, 2]
    other = boxes + torch.tensor([2.0, 1, 2, 1])
    torch.testing.assert_close(paired_iou(boxes, other), box_iou(boxes, other).diagonal())


def test_merge_tiles_prefers_whole_boxes_by_hand():
    boxes = torch.tensor([
        [10.0, 10, 30, 30],  # 0: whole object, score 0.8
        [10.0, 10, 22, 30],  # 1: the same object cut by a tile edge, higher score: goes (inside 0)
        [12.0, 11, 30, 31],  # 2: IoU 0.76 with 0, same class: goes
        [12.0, 11, 30, 31],  # 3: same box, another class: stays
        [40.0, 40, 50, 50],  # 4: elsewhere, cut but alone: stays
    ])
    labels, scores = torch.tensor([1, 1, 1, 2, 1]), torch.tensor([0.8, 0.9, 0.7, 0.6, 0.5])
    cut = torch.tensor([False, True, False, False, True])
    assert merge_tiles(boxes, labels, scores, cut).tolist() == [0, 3, 4]


def test_registry_hparams_rebuild_and_errors():
    net = create_architecture("maskrcnn", spatial_dims=2, in_channels=1, out_channels=3, **SMALL[2])
    assert isinstance(net, MaskRCNN) and net.num_classes == 3
    spec = json.loads(json.dumps(net.hparams))
    assert spec["name"] == "maskrcnn" and spec["out_channels"] == 3
    rebuilt = create_architecture(spec.pop("name"), **spec)
    rebuilt.load_state_dict(net.state_dict())
    x = torch.as_tensor(balls((40, 36), DISCS["centres"][:1], (8,))[0])[None]
    a, b = net.detect(x, score_threshold=0.0)[0], rebuilt.detect(x, score_threshold=0.0)[0]
    torch.testing.assert_close(a.scores, b.scores)
    with pytest.raises(ValueError, match="num_classes"):
        MaskRCNN(2, 1, 1)
    with pytest.raises(ValueError, match="fpn_levels"):
        MaskRCNN(2, 1, 2, widths=(8, 16), fpn_levels=(1, 2))
    with pytest.raises(ValueError, match="patch_size"):
        detect_instances(net, np.zeros((1, 8, 8), np.float32), patch_size=(8,))


# ----------------------------------------------------------------------------------- losses


def _touching_and_border(d):
    """Two touching balls, one cut by the border; the image is 48 (2D) or 24 (3D) wide."""
    if d == 2:
        return balls((48, 48), ((14, 14), (14, 28), (40, 44)), (7, 7, 8))
    return balls((24, 24, 24), ((8, 8, 8), (8, 16, 8), (20, 20, 22)), (4, 4, 5))


@pytest.mark.parametrize("d", [2, 3])
def test_training_loss_is_finite_with_a_gradient_for_every_parameter(d):
    torch.manual_seed(0)
    net = MaskRCNN(d, 1, 3, **SMALL[d])
    image, instances = _touching_and_border(d)
    encoded = encode(instances, {1: 1, 2: 2, 3: 1}, num_classes=3)
    x, y = torch.as_tensor(image)[None].repeat(2, 1, *[1] * d), torch.as_tensor(encoded)[None].repeat(2, *[1] * d)
    terms = net.loss_terms(net.train()(x), y.long())
    assert all(torch.isfinite(v) and v > 0 for v in terms.values()), terms
    sum(terms.values()).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"zero gradient in {name}"


@pytest.mark.parametrize("d", [2, 3])
def test_empty_and_ignored_targets_give_only_negative_terms(d):
    torch.manual_seed(0)
    net = MaskRCNN(d, 1, 2, **SMALL[d])
    image, _ = _touching_and_border(d)
    x = torch.as_tensor(image)[None]
    empty = torch.zeros((1, *image.shape[1:]), dtype=torch.long)
    terms = net.loss_terms(net.train()(x), empty)
    assert terms["rpn_cls"] > 0 and terms["box_cls"] > 0
    assert terms["rpn_reg"] == 0 and terms["box_reg"] == 0 and terms["mask"] == 0
    loss = net.training_loss(net(x), empty, None)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    # all voxels ignored: nothing to learn from
    terms = net.loss_terms(net(x), torch.full_like(empty, -1))
    assert all(float(v.detach()) == 0 for v in terms.values()), terms


def test_trainer_drives_training_loss_with_encoded_patches(tmp_path):
    image, instances = _touching_and_border(2)
    encoded = torch.as_tensor(encode(instances, None, num_classes=2))

    def batches():
        while True:
            yield {"image": torch.as_tensor(image)[None], "label": encoded[None]}

    torch.manual_seed(0)
    net = MaskRCNN(2, 1, 2, **SMALL[2])
    config = TrainingConfig(epochs=2, iterations_per_epoch=3, learning_rate=3e-3)
    history = train(net, create_loss("dice+ce"), batches(), config=config, checkpoint=tmp_path / "run.pt")
    assert [h["nonfinite_steps"] for h in history] == [0, 0]
    assert all(np.isfinite(h["loss"]) and h["loss"] > 0 for h in history)
    assert history[1]["loss"] < history[0]["loss"]


# ----------------------------------------------------------------------------------- learning


@pytest.fixture(scope="module")
def discs_2d():
    image, instances = balls((64, 64), **DISCS)
    torch.manual_seed(0)
    untrained = MaskRCNN(2, 1, 2, **SMALL[2])
    trained = fit(MaskRCNN(2, 1, 2, **SMALL[2]), image, instances, steps=80, lr=3e-3)
    return image, instances, untrained, trained


def test_overfitting_one_2d_image_finds_every_disc(discs_2d):
    image, instances, untrained, trained = discs_2d
    x = torch.as_tensor(image)[None]
    before = matched_ious(untrained.detect(x, score_threshold=0.5)[0], instances)
    assert not (before > 0.7).all()  # the bar is out of an untrained net's reach
    found = trained.detect(x, score_threshold=0.5)[0]
    ious = matched_ious(found, instances)
    assert len(found) == 3 and (ious > 0.7).all(), ious
    assert found.labels.tolist() == [1, 1, 1] and (found.scores > 0.9).all()


def test_overfitting_one_3d_image_finds_both_spheres():
    image, instances = balls((24, 24, 24), ((8, 8, 9), (17, 15, 14)), (5, 4))
    torch.manual_seed(0)
    x = torch.as_tensor(image)[None]
    net = MaskRCNN(3, 1, 2, **SMALL[3])
    assert not (matched_ious(net.detect(x, score_threshold=0.5)[0], instances) > 0.6).all()
    fit(net, image, instances, steps=60, lr=3e-3)
    found = net.detect(x, score_threshold=0.5)[0]
    ious = matched_ious(found, instances)  # a looser bar than 2D's, after 60 steps
    assert len(found) == 2 and (ious > 0.6).all(), ious


def test_tiled_detection_finds_each_disc_once(discs_2d):
    image, instances, _, trained = discs_2d
    big = np.concatenate([image, image], axis=1)  # 128 x 64: two copies of the training image
    reference = np.concatenate([instances, np.where(instances > 0, instances + 3, 0)], axis=0)
    whole, whole_scores = detect_instances(trained, big, patch_size=(128, 64))
    tiled, tiled_scores = detect_instances(trained, big, patch_size=(64, 64), overlap=0.25)  # 3 tiles
    assert len(whole_scores) == len(tiled_scores) == 6
    assert tiled.dtype == np.int32 and set(np.unique(tiled)) == set(range(7))
    for n in range(1, 7):  # each disc is one instance of each map, the same in both
        assert max(mask_iou(tiled == m, reference == n) for m in range(1, 7)) > 0.7
        best = max(range(1, 7), key=lambda m: mask_iou(tiled == m, reference == n))
        assert max(mask_iou(tiled == best, whole == k) for k in range(1, 7)) > 0.8


def test_an_image_of_many_objects_keeps_them_all():
    """The DSB image holds 125 nuclei: the default cap on detections per image must not cut them
    (it was COCO's 100); 150 separate confident boxes all survive post-processing."""
    net = create_architecture("maskrcnn", spatial_dims=2, in_channels=1, out_channels=2, widths=[8, 16, 32],
                              fpn_channels=16, head_width=32)
    assert net.thresholds[2] >= 1000
    corners = torch.stack(torch.meshgrid(torch.arange(15.0), torch.arange(10.0), indexing="ij"), -1).reshape(-1, 2) * 10
    boxes = torch.cat([corners, corners + 8], 1)  # 150 boxes of 8 x 8, 2 apart
    probabilities = torch.tensor([[0.05, 0.95]]).repeat(150, 1)
    kept, labels, scores = net.roi_heads._select(boxes, probabilities, torch.zeros(150, 8), (160, 110),
                                                 *net.thresholds)
    assert len(kept) == 150 and labels.eq(1).all() and torch.allclose(scores, torch.full((150,), 0.95))
