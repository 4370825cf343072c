"""Tests of medseg's U-Net on anisotropic grids (per-axis strides and kernels, as nnU-Net plans
them), on tiny inputs, and with a plan's kernels in MONAI's DynUNet."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medseg.architectures import UNet, create_architecture
from tests.test_architectures import _ce, _check_grads


def test_unet_tiny_inputs_and_batch_norm() -> None:
    net = UNet(2, 1, 2, features=(4, 8, 16), norm="batch")
    assert net(torch.randn(2, 1, 5, 3)).shape == (2, 2, 5, 3)
    net = UNet(3, 1, 2, features=(4, 8, 16))  # instance norm needs two voxels at the bottom
    assert net(torch.randn(1, 1, 1, 1, 1)).shape == (1, 2, 1, 1, 1)


# --- per-axis strides and kernels (anisotropic plans) ---------------------------------------------

ANISO_STRIDES = [(1, 2, 2), (1, 2, 2), (2, 2, 2)]
ANISO_KERNELS = [(1, 3, 3), (1, 3, 3), (3, 3, 3), (3, 3, 3)]


def _encoder_shapes(net: UNet, x: torch.Tensor) -> list[tuple[int, ...]]:
    shapes: list[tuple[int, ...]] = []
    hooks = [stage.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape[2:])))
             for stage in net.encoder]
    with torch.no_grad():
        net.eval()(x)
    for hook in hooks:
        hook.remove()
    return shapes


@pytest.mark.parametrize("downsample", ["conv", "maxpool"])
@pytest.mark.parametrize("residual", [False, True])
def test_unet_anisotropic_keeps_the_thick_axis_in_early_stages(residual: bool, downsample: str) -> None:
    """16x64x64 with the thick axis first: 64 -> 32 -> 16 -> 8 in-plane, 16 -> 16 -> 16 -> 8 across."""
    torch.manual_seed(0)
    net = UNet(3, 1, 2, features=(4, 8, 8, 16), strides=ANISO_STRIDES, kernel_sizes=ANISO_KERNELS,
               residual=residual, downsample=downsample)
    x = torch.randn(2, 1, 16, 64, 64)
    assert _encoder_shapes(net, x) == [(16, 64, 64), (16, 32, 32), (16, 16, 16), (8, 8, 8)]
    assert net.total_stride == (2, 8, 8)
    first = net.encoder[0][0][0] if not residual else net.encoder[0].conv1[0]
    assert first.kernel_size == (1, 3, 3) and first.padding == (0, 1, 1)
    outputs = net.train()(x)
    assert outputs.shape == (2, 2, 16, 64, 64)
    F.cross_entropy(outputs, torch.randint(0, 2, (2, 16, 64, 64))).backward()
    _check_grads(net)


def test_unet_anisotropic_thick_axis_never_mixes_in_early_stages() -> None:
    """With 1x3x3 kernels and (1, 2, 2) strides up to the third stage, changing one slice changes
    the first two stages' features on that slice only (batch norm in eval: no volume statistics)."""
    torch.manual_seed(0)
    net = UNet(3, 1, 2, features=(4, 8, 8, 16), strides=ANISO_STRIDES, kernel_sizes=ANISO_KERNELS,
               norm="batch").eval()
    x = torch.randn(1, 1, 8, 16, 16)
    y = x.clone()
    y[:, :, 5] += 1.0
    with torch.no_grad():
        a, b = net.encoder[1](net.encoder[0](x)), net.encoder[1](net.encoder[0](y))
    changed = (a - b).abs().amax(dim=(0, 1, 3, 4)) > 0
    assert changed.tolist() == [i == 5 for i in range(8)]


def test_unet_anisotropic_deep_supervision_shapes_and_odd_sizes() -> None:
    net = UNet(3, 1, 3, features=(4, 8, 8, 16), strides=ANISO_STRIDES, deep_supervision=True).train()
    outputs = net(torch.randn(1, 1, 15, 60, 61))
    # ceil(spatial / cumulative stride): (1, 1, 1), (1, 2, 2), (1, 4, 4)
    assert [tuple(o.shape[2:]) for o in outputs] == [(15, 60, 61), (15, 30, 31), (15, 15, 16)]
    target = torch.randint(0, 3, (1, 15, 60, 61))
    assert torch.isfinite(net.training_loss(outputs, target, _ce))


def test_unet_default_strides_build_the_same_network() -> None:
    torch.manual_seed(0)
    plain = UNet(3, 1, 2, features=(4, 8, 16)).state_dict()
    torch.manual_seed(0)
    explicit = UNet(3, 1, 2, features=(4, 8, 16), strides=[2, (2, 2, 2)], kernel_sizes=[3] * 3).state_dict()
    assert plain.keys() == explicit.keys()
    assert all(torch.equal(plain[k], explicit[k]) for k in plain)


def test_unet_bad_strides_and_kernels() -> None:
    with pytest.raises(ValueError, match=r"strides needs 2 entries"):
        UNet(3, 1, 2, features=(4, 8, 16), strides=[(1, 2, 2)])
    with pytest.raises(ValueError, match=r"kernel_sizes needs 3 entries"):
        UNet(3, 1, 2, features=(4, 8, 16), kernel_sizes=[(1, 3, 3), 3])
    with pytest.raises(ValueError, match=r"kernel_sizes must be odd"):
        UNet(2, 1, 2, features=(4, 8), kernel_sizes=[(2, 3), 3])


def test_dynunet_takes_a_plans_kernels() -> None:
    torch.manual_seed(0)
    net = create_architecture("dynunet", spatial_dims=3, in_channels=1, out_channels=2, filters=(4, 8, 8, 16),
                              pool_kernels=ANISO_STRIDES, conv_kernels=ANISO_KERNELS)
    assert net.net.strides == [[1, 1, 1], *map(list, ANISO_STRIDES)]
    assert net.net.kernel_size == [list(k) for k in ANISO_KERNELS]
    assert net.multiple == (2, 8, 8)
    x = torch.randn(1, 1, 10, 40, 36)
    out = net.train()(x)
    assert out.shape == (1, 2, 10, 40, 36)
    out.sum().backward()
    with pytest.raises(ValueError, match="together"):
        create_architecture("dynunet", spatial_dims=3, in_channels=1, out_channels=2, pool_kernels=ANISO_STRIDES)
