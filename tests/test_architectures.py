"""Tests of medseg.architectures: shapes at odd sizes, gradients, counts, losses, registry."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medseg.architectures import (
    ARCHITECTURES,
    DETECTORS,
    DeepLabV3Plus,
    FastFCN,
    GatedSCNN,
    UNet,
    create_architecture,
    deep_supervision_weights,
    describe_architectures,
    downsample_labels,
    dynunet_plan,
)
from medseg.architectures.boundary import balanced_bce, dual_task_loss, label_edges

SHAPES = {2: (97, 83), 3: (37, 51, 29)}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny convolutions run fastest on one thread; on a busy machine, many times faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _ce(logits: torch.Tensor, target: torch.Tensor, **_: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, target.long())


def _n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def _check_grads(net: torch.nn.Module) -> None:
    for name, p in net.named_parameters():
        if "norm_cross_attn" in name:  # MONAI's ViT blocks build it even without cross-attention
            continue
        assert p.grad is not None, f"no gradient reached {name}"
        assert torch.isfinite(p.grad).all(), f"non-finite gradient in {name}"


def _unet_count(d: int, cin: int, cout: int, features: tuple[int, ...]) -> int:
    """Hand count of a plain UNet with instance norm (affine) and stride-2 conv downsampling."""

    def conv(k: int, a: int, b: int) -> int:
        return k**d * a * b + b

    def unit(a: int, b: int) -> int:  # conv 3x3 + affine norm
        return conv(3, a, b) + 2 * b

    total, previous = 0, cin
    for f in features:
        total += unit(previous, f) + unit(f, f)
        previous = f
    for f_low, f_high in zip(features[:-1], features[1:], strict=True):
        total += conv(2, f_high, f_low) + unit(2 * f_low, f_low) + unit(f_low, f_low)
    return total + conv(1, features[0], cout)  # the 1x1 head


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("downsample", ["conv", "maxpool"])
def test_unet_shapes_and_gradients(d: int, residual: bool, downsample: str) -> None:
    torch.manual_seed(0)
    net = UNet(d, 2, 3, features=(4, 8, 16), residual=residual, downsample=downsample)
    x = torch.randn(2, 2, *SHAPES[d])
    out = net(x)
    assert out.shape == (2, 3, *SHAPES[d])
    _ce(out, torch.randint(0, 3, (2, *SHAPES[d]))).backward()
    _check_grads(net)


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("features", [(4, 8), (3, 5, 7)])
def test_unet_parameter_count(d: int, features: tuple[int, ...]) -> None:
    net = UNet(d, 2, 3, features=features)
    assert _n_params(net) == _unet_count(d, 2, 3, features)


def test_deep_supervision_weights_match_nnunet() -> None:
    # nnU-Net v2: 1/2**i, lowest resolution zeroed, normalised to sum 1.
    assert deep_supervision_weights(4) == pytest.approx([4 / 7, 2 / 7, 1 / 7, 0.0])
    assert deep_supervision_weights(2) == pytest.approx([1.0, 0.0])
    assert deep_supervision_weights(1) == [1.0]


@pytest.mark.parametrize("d", [2, 3])
def test_unet_deep_supervision(d: int) -> None:
    torch.manual_seed(0)
    shape = SHAPES[d]
    net = UNet(d, 1, 2, features=(4, 6, 8, 10), deep_supervision=True)
    x = torch.randn(1, 1, *shape)
    outs = net(x)
    assert isinstance(outs, tuple) and len(outs) == 3
    for i, out in enumerate(outs):
        assert out.shape == (1, 2, *[-(-s // 2**i) for s in shape])
    target = torch.randint(0, 2, (1, *shape))
    seen = []

    def spy(logits: torch.Tensor, tgt: torch.Tensor, **extras: torch.Tensor) -> torch.Tensor:
        seen.append((tuple(tgt.shape), sorted(extras)))
        return _ce(logits, tgt)

    loss = net.training_loss(outs, target, spy, dist=torch.zeros(1, *shape))
    w = deep_supervision_weights(3)
    expected = sum(
        wi * _ce(o, downsample_labels(target, o.shape[2:])) for wi, o in zip(w, outs, strict=True)
    )
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert seen[0] == ((1, *shape), ["dist"])  # extras only at full resolution
    assert all(extras == [] for _, extras in seen[1:])
    loss.backward()
    _check_grads(net)
    net.eval()
    assert net(x).shape == (1, 2, *shape)


def test_downsample_labels_nearest() -> None:
    target = torch.arange(5 * 7).reshape(1, 5, 7)
    small = downsample_labels(target, (3, 4))
    assert torch.equal(small, target[:, ::2, ::2])


def test_unet_eval_is_deterministic() -> None:
    torch.manual_seed(0)
    net = UNet(2, 1, 2, features=(4, 8, 16), dropout=0.3).eval()
    x = torch.randn(1, 1, 33, 21)
    with torch.no_grad():
        assert torch.equal(net(x), net(x))


def test_unet_overfits_one_sample() -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 1, 24, 24)
    target = (x[:, 0] > 0.3).long()
    net = UNet(2, 1, 2, features=(8, 16))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(50):
        optimizer.zero_grad()
        loss = _ce(net(x), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]
    assert losses[-1] < 0.05  # about 0.004 in practice, from about 0.7


def test_unet_bad_arguments() -> None:
    with pytest.raises(ValueError, match="spatial_dims"):
        UNet(4, 1, 2)
    with pytest.raises(ValueError, match="downsample"):
        UNet(2, 1, 2, downsample="avgpool")
    with pytest.raises(ValueError, match="norm"):
        UNet(2, 1, 2, norm="group")
    with pytest.raises(ValueError, match="features"):
        UNet(2, 1, 2, features=(8,))


# ----------------------------------------------------------------------------- the registry

SMALL = {
    "unet": {"features": (4, 8, 16)},
    "deeplabv3plus": {"widths": (4, 8, 8, 16, 16), "aspp_channels": 8, "low_level_channels": 4},
    "fastfcn": {"widths": (4, 8, 8, 16, 16), "jpu_channels": 4, "head_channels": 8},
    "gatedscnn": {
        "widths": (4, 8, 8, 16, 16),
        "aspp_channels": 8,
        "low_level_channels": 4,
        "shape_channels": (4, 4, 2),
    },
    "dynunet": {
        "patch_size": {2: (32, 32), 3: (16, 16, 16)},
        "filters": {2: (4, 8, 8, 16), 3: (4, 8, 8)},
    },
    "segresnet": {"init_filters": 8, "blocks_down": (1, 1, 1), "blocks_up": (1, 1)},
    # Transformers: tiny widths; UNETR takes inputs up to img_size (a multiple of 16).
    "swinunetr": {"feature_size": 12, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1)},
    "unetr": {
        "img_size": {2: (112, 96), 3: (48, 64, 32)},
        "feature_size": 4,
        "hidden_size": 16,
        "mlp_dim": 16,
        "num_heads": 2,
    },
}
NEEDS_EINOPS = {"swinunetr", "unetr"}


def _small_kwargs(name: str, d: int) -> dict:
    return {k: v[d] if isinstance(v, dict) else v for k, v in SMALL[name].items()}


def test_registry_names() -> None:
    assert sorted(ARCHITECTURES) == sorted([*SMALL, *DETECTORS])  # detectors: tests/test_maskrcnn.py


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("name", list(SMALL))
def test_registry_shapes_and_gradients(name: str, d: int) -> None:
    if name in NEEDS_EINOPS:
        pytest.importorskip("einops")
    torch.manual_seed(0)
    net = create_architecture(
        name, spatial_dims=d, in_channels=2, out_channels=3, **_small_kwargs(name, d)
    )
    x = torch.randn(2, 2, *SHAPES[d])
    target = torch.randint(0, 3, (2, *SHAPES[d]))
    outputs = net.train()(x)
    if hasattr(net, "training_loss"):
        loss = net.training_loss(outputs, target, _ce)
    else:
        loss = _ce(outputs, target)
    logits = outputs[0] if isinstance(outputs, tuple) else outputs
    assert logits.shape == (2, 3, *SHAPES[d])
    assert torch.isfinite(loss)
    loss.backward()
    _check_grads(net)
    with torch.no_grad():
        out = net.eval()(x[:1])
    assert isinstance(out, torch.Tensor) and out.shape == (1, 3, *SHAPES[d])


def test_unknown_architecture_lists_valid_names() -> None:
    with pytest.raises(
        ValueError, match=r"Unknown architecture 'unett'\. Did you mean 'unet'\?.*fastfcn"
    ):
        create_architecture("unett", spatial_dims=2, in_channels=1, out_channels=2)


def test_create_architecture_passes_modules_and_checks_args() -> None:
    module = torch.nn.Conv2d(1, 2, 1)
    assert create_architecture(module, spatial_dims=2, in_channels=1, out_channels=2) is module
    assert isinstance(
        create_architecture("Deeplabv3plus", spatial_dims=2, in_channels=1, out_channels=2),
        DeepLabV3Plus,
    )
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3, got 1"):
        create_architecture("fastfcn", spatial_dims=1, in_channels=1, out_channels=2)
    with pytest.raises(TypeError, match="'unet'"):
        create_architecture("unet", spatial_dims=2, in_channels=1, out_channels=2, widths=(4,))


@pytest.mark.parametrize("cls", [UNet, DeepLabV3Plus, FastFCN, GatedSCNN])
def test_spatial_dims_is_validated(cls: type) -> None:
    with pytest.raises(ValueError, match="spatial_dims"):
        cls(4, 1, 2)
    net = cls(2, 1, 2, **_small_kwargs(cls.__name__.lower(), 2))
    with pytest.raises(ValueError, match=r"expects input \(B, C, \*spatial\) with 4 dims"):
        net(torch.zeros(1, 1, 8, 8, 8))


def test_unetr_needs_img_size_and_fits_it() -> None:
    with pytest.raises(ValueError, match="img_size"):
        create_architecture("unetr", spatial_dims=3, in_channels=1, out_channels=2)
    pytest.importorskip("einops")
    with pytest.raises(ValueError, match="multiple of 16"):
        create_architecture("unetr", spatial_dims=2, in_channels=1, out_channels=2, img_size=40)
    net = create_architecture(
        "unetr", spatial_dims=2, in_channels=1, out_channels=2, **_small_kwargs("unetr", 2)
    )
    with pytest.raises(ValueError, match="exceeds the network's img_size"):
        net(torch.zeros(1, 1, 113, 10))


def test_dynunet_plan_follows_nnunet() -> None:
    kernels, strides = dynunet_plan((128, 128, 128))
    assert strides == [[1, 1, 1]] + [[2, 2, 2]] * 5 and kernels == [[3, 3, 3]] * 6
    # 3 mm slices against 0.8 mm pixels: in-plane pooling first, 1-wide kernels through z.
    kernels, strides = dynunet_plan((40, 224, 192), (3.0, 0.8, 0.8))
    assert strides[:3] == [[1, 1, 1], [1, 2, 2], [2, 2, 2]]
    assert kernels[:2] == [[1, 3, 3], [3, 3, 3]]


def test_describe_architectures() -> None:
    rows = describe_architectures(spatial_dims=2, in_channels=1, out_channels=2)
    assert [r[0] for r in rows] == list(ARCHITECTURES)
    counts = {name: count for name, count, _ in rows}
    assert counts["unet"] == _unet_count(2, 1, 2, (32, 64, 128, 256, 320))
    assert counts["deeplabv3plus"] == _n_params(DeepLabV3Plus(2, 1, 2))
    assert all(isinstance(text, str) and text for _, _, text in rows)
    assert all(
        count < 5_000_000
        for name, count, _ in rows
        if name in SMALL and name in {"deeplabv3plus", "fastfcn", "gatedscnn"}
    )


# ----------------------------------------------------------------------------- Gated-SCNN


def test_label_edges_by_hand() -> None:
    target = torch.zeros(1, 5, 6, dtype=torch.long)
    target[0, 1:4, 2:5] = 1
    edges = label_edges(target)[0, 0]
    interior = torch.zeros(5, 6, dtype=torch.bool)
    interior[2, 3] = True  # the only foreground voxel with no background neighbour
    expected = torch.zeros(5, 6)
    expected[0:5, 1:6] = 1  # the 3x3 block dilated by one voxel...
    expected[interior] = 0  # ...minus the interior
    assert torch.equal(edges, expected)


def test_balanced_bce_formula() -> None:
    logits = torch.tensor([[[0.5, -1.0, 2.0, 0.0]]])
    edges = torch.tensor([[[1.0, 0.0, 0.0, 0.0]]])
    # one positive of four: positives weigh 3/4, negatives 1/4; mean over the four voxels
    p = torch.sigmoid(logits)
    manual = -(0.75 * torch.log(p[..., 0]) + 0.25 * torch.log(1 - p[..., 1:]).sum()) / 4
    assert balanced_bce(logits, edges).item() == pytest.approx(manual.item(), rel=1e-6)


def test_dual_task_loss_vanishes_for_a_confident_correct_prediction() -> None:
    torch.manual_seed(0)
    target = torch.zeros(1, 12, 12, dtype=torch.long)
    target[0, 3:8, 4:9] = 1
    perfect = 50.0 * F.one_hot(target, 2).movedim(-1, 1).float()
    wrong = 50.0 * F.one_hot(1 - target.roll(2, dims=1), 2).movedim(-1, 1).float()
    assert dual_task_loss(perfect, target).item() < 1e-3
    assert dual_task_loss(wrong, target).item() > 0.1


@pytest.mark.parametrize("d", [2, 3])
def test_gated_scnn_training_loss_adds_boundary_terms(d: int) -> None:
    torch.manual_seed(0)
    shape = (33, 29) if d == 2 else (17, 19, 15)
    net = GatedSCNN(d, 1, 3, **_small_kwargs("gatedscnn", d))
    logits, boundary = net(torch.randn(2, 1, *shape))
    assert boundary.shape == (2, 1, *shape)
    target = torch.randint(0, 3, (2, *shape))
    seg = _ce(logits, target)
    torch.manual_seed(1)  # the consistency term draws Gumbel noise
    total = net.training_loss((logits, boundary), target, _ce)
    assert torch.isfinite(total) and total.item() > seg.item()
    torch.manual_seed(1)  # (B, 1, *spatial) targets give the same value
    again = net.training_loss((logits, boundary), target[:, None], lambda a, b: _ce(a, b[:, 0]))
    assert again.item() == pytest.approx(total.item(), rel=1e-6)
    total.backward()
    _check_grads(net)
