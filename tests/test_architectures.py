"""Tests of medseg.architectures: shapes at odd sizes, gradients, counts, losses, registry."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medseg.architectures import UNet, deep_supervision_weights, downsample_labels

SHAPES = {2: (97, 83), 3: (37, 51, 29)}


def _ce(logits: torch.Tensor, target: torch.Tensor, **_: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, target.long())


def _n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def _check_grads(net: torch.nn.Module) -> None:
    for name, p in net.named_parameters():
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
    assert losses[-1] < 0.2 * losses[0]
    assert losses[-1] < 0.15


def test_unet_bad_arguments() -> None:
    with pytest.raises(ValueError, match="spatial_dims"):
        UNet(4, 1, 2)
    with pytest.raises(ValueError, match="downsample"):
        UNet(2, 1, 2, downsample="avgpool")
    with pytest.raises(ValueError, match="norm"):
        UNet(2, 1, 2, norm="group")
    with pytest.raises(ValueError, match="features"):
        UNet(2, 1, 2, features=(8,))
