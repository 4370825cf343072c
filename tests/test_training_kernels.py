"""The CPU weight gradient of training convolutions taken as a forward convolution
(medseg.training.kernels): the same gradients as PyTorch's own backward, on the calls it takes."""

from __future__ import annotations

import pytest
import torch

from medseg.architectures import UNet
from medseg.training.kernels import MIN_CHANNELS, MIN_VOXELS, fast_weight_gradients


def _grads(module, x, fast):
    module.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(x.requires_grad)
    with fast_weight_gradients(fast):
        out = module(x)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()  # a gradient that varies
    grads = {name: p.grad.clone() for name, p in module.named_parameters()}
    return out, grads, None if x.grad is None else x.grad.clone()


@pytest.mark.parametrize(("kernel", "padding", "bias", "input_grad"), [
    (3, 1, True, True), (3, 1, False, False), ((1, 3, 3), (0, 1, 1), True, True), (3, 0, True, True),
    (5, 2, False, True), ((3, 1, 1), (1, 0, 0), True, False)])
def test_gradients_equal_pytorchs_own(kernel, padding, bias, input_grad):
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(MIN_CHANNELS, 5, kernel, padding=padding, bias=bias)
    x = torch.randn(2, MIN_CHANNELS, 17, 18, 16, requires_grad=input_grad)
    out_fast, fast, x_fast = _grads(conv, x, True)
    out_ref, ref, x_ref = _grads(conv, x, False)
    assert out_fast.grad_fn.name().endswith("_ConvolutionBackward")  # the route was taken
    assert out_ref.grad_fn.name() == "ConvolutionBackward0"
    torch.testing.assert_close(out_fast, out_ref, rtol=0, atol=0)  # the forward is PyTorch's own
    assert fast.keys() == ref.keys()
    for name in ref:
        torch.testing.assert_close(fast[name], ref[name], rtol=1e-4, atol=1e-4 * float(ref[name].abs().max()))
    if input_grad:
        torch.testing.assert_close(x_fast, x_ref, rtol=1e-5, atol=1e-6)
    else:
        assert x_fast is None


@pytest.mark.parametrize("case", ["stride", "dilation", "groups", "small", "few_channels", "2d", "float64", "frozen",
                                  "no_grad"])
def test_other_calls_are_left_to_pytorch(case):
    kwargs = {"stride": {"stride": 2}, "dilation": {"dilation": 2, "padding": 2}, "groups": {"groups": 2}}.get(case, {})
    channels = MIN_CHANNELS - 1 if case == "few_channels" else MIN_CHANNELS
    side = 4 if case == "small" else 17
    assert side**3 < MIN_VOXELS if case == "small" else side**3 >= MIN_VOXELS
    conv = (torch.nn.Conv2d if case == "2d" else torch.nn.Conv3d)(channels, 6, 3, **{"padding": 1, **kwargs})
    x = torch.randn(1, channels, *(side,) * (2 if case == "2d" else 3))
    if case == "float64":
        conv, x = conv.double(), x.double()
    if case == "frozen":
        conv.requires_grad_(False)
        x.requires_grad_(True)
    with fast_weight_gradients(), torch.set_grad_enabled(case != "no_grad"):
        out = conv(x)
    assert out.grad_fn is None if case == "no_grad" else out.grad_fn.name() != "_ConvolutionBackward"


def test_a_unet_trains_to_the_same_weights():
    """Three SGD steps of a 3D U-Net with and without the route: the same weights. (The biases
    before instance norm have no true gradient, only rounding noise, and are left out; Adam's
    sign-like first step would turn such noise, in any weight element whose gradient is near
    zero, into a full step, so SGD is the fair check.)"""
    weights = {}
    for fast in (True, False):
        torch.manual_seed(0)
        net = UNet(3, 1, 3, features=(8, 16, 32))
        optimizer = torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.9)
        for step in range(3):
            x = torch.randn(2, 1, 24, 24, 16, generator=torch.Generator().manual_seed(step))
            y = (x > 0.5).long()[:, 0] + (x > 1.0).long()[:, 0]
            with fast_weight_gradients(fast):
                loss = torch.nn.functional.cross_entropy(net(x), y)
                optimizer.zero_grad()
                loss.backward()
            optimizer.step()
        weights[fast] = {n: p.detach().clone() for n, p in net.named_parameters() if p.ndim > 1}
    torch.manual_seed(0)
    start = UNet(3, 1, 3, features=(8, 16, 32))
    for name, value in weights[False].items():
        torch.testing.assert_close(weights[True][name], value, rtol=1e-4, atol=1e-5)
    moved = max(float((weights[False][n] - p.detach()).abs().max()) for n, p in start.named_parameters() if n in weights[False])
    assert moved > 1e-3  # the steps changed the weights: the comparison means something
