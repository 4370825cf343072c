"""The oneDNN route for batch-of-one 3D convolutions gives PyTorch's own numbers, and is taken."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import profile

from medseg.architectures import UNet
from medseg.inference.kernels import onednn_convolutions

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")


def kernels_run(fn) -> set[str]:
    with profile() as prof:
        fn()
    return {event.name for event in prof.events()}


# (in, out, kernel, stride, padding, dilation, groups, bias)
CONVS = [
    (4, 6, 3, 1, 1, 1, 1, True),
    (4, 6, (1, 3, 3), (1, 2, 2), (0, 1, 1), 1, 1, False),
    (6, 6, 3, 2, 2, 2, 3, True),
    (3, 5, 1, 1, 0, 1, 1, True),
]


@pytest.mark.parametrize(("cin", "cout", "kernel", "stride", "padding", "dilation", "groups", "bias"), CONVS)
def test_batch_of_one_conv3d_equals_pytorch_through_onednn(cin, cout, kernel, stride, padding, dilation, groups, bias):
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(cin, cout, kernel, stride, padding, dilation, groups, bias).eval()
    x = torch.randn(1, cin, 11, 14, 9)
    with torch.no_grad():
        reference = conv(x)
        with onednn_convolutions():
            fast = conv(x)
            names = kernels_run(lambda: conv(x))
    torch.testing.assert_close(fast, reference, atol=1e-5, rtol=1e-5)
    assert "aten::mkldnn_convolution" in names and "aten::slow_conv3d_forward" not in names
    if groups == 1:  # PyTorch's own rule sends grouped convolutions to oneDNN already
        assert "aten::slow_conv3d_forward" in kernels_run(lambda: conv(x))


@pytest.mark.parametrize(("kernel", "bias"), [((2, 2, 2), True), ((1, 2, 2), False), ((3, 2, 1), True)])
def test_upsampling_conv_transpose3d_is_a_product_and_a_shuffle(kernel, bias):
    torch.manual_seed(1)
    up = torch.nn.ConvTranspose3d(5, 3, kernel, stride=kernel, bias=bias).eval()
    x = torch.randn(1, 5, 4, 6, 3)
    with torch.no_grad():
        reference = up(x)
        with onednn_convolutions():
            fast = up(x)
            names = kernels_run(lambda: up(x))
    assert fast.shape == reference.shape == (1, 3, 4 * kernel[0], 6 * kernel[1], 3 * kernel[2])
    torch.testing.assert_close(fast, reference, atol=1e-5, rtol=1e-5)
    assert "aten::slow_conv_transpose3d" not in names


def test_other_calls_run_unchanged():
    torch.manual_seed(2)
    up = torch.nn.ConvTranspose3d(4, 2, 3, stride=2, padding=1, output_padding=1)  # overlapping kernels
    conv = torch.nn.Conv3d(4, 2, 3, padding=1)
    x = torch.randn(1, 4, 5, 6, 7, requires_grad=True)
    with onednn_convolutions():
        with torch.no_grad():
            assert "aten::slow_conv_transpose3d" in kernels_run(lambda: up(x))
        out = conv(x)  # gradients needed: PyTorch's own kernel and its backward
        out.sum().backward()
        names = kernels_run(lambda: conv(x))
    assert "aten::mkldnn_convolution" not in names
    reference = torch.autograd.grad(F.conv3d(x, conv.weight, conv.bias, padding=1).sum(), x)[0]
    torch.testing.assert_close(x.grad, reference)
    batch = torch.randn(2, 4, 5, 6, 7)
    with torch.no_grad(), onednn_convolutions():  # batches of two are PyTorch's to route
        torch.testing.assert_close(conv(batch), F.conv3d(batch, conv.weight, conv.bias, padding=1))


@pytest.mark.filterwarnings("ignore:TF32 acceleration")
def test_switched_off_or_disabled_it_changes_nothing():
    conv = torch.nn.Conv3d(2, 2, 3, padding=1).eval()
    x = torch.randn(1, 2, 6, 6, 6)
    with torch.no_grad(), onednn_convolutions(enabled=False):
        assert "aten::mkldnn_convolution" not in kernels_run(lambda: conv(x))
    with torch.no_grad(), torch.backends.mkldnn.flags(enabled=False), onednn_convolutions():
        assert "aten::mkldnn_convolution" not in kernels_run(lambda: conv(x))


def test_a_unet_gives_the_same_probabilities():
    torch.manual_seed(3)
    net = UNet(3, 1, 3, features=(8, 16, 32, 64)).eval()
    x = torch.randn(1, 1, 24, 32, 24)
    with torch.no_grad():
        reference = torch.softmax(net(x), 1)
        with onednn_convolutions():
            fast = torch.softmax(net(x), 1)
    torch.testing.assert_close(fast, reference, atol=1e-5, rtol=0)


def test_a_compiled_network_keeps_its_own_kernels():
    # tracing through the mode would hand torch.mkldnn_convolution fake tensors, which it rejects
    torch.manual_seed(4)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ConvTranspose3d(4, 2, 2, 2)).eval()
    compiled = torch.compile(net, backend="eager")
    x = torch.randn(1, 1, 6, 7, 5)
    with torch.no_grad(), onednn_convolutions():
        torch.testing.assert_close(compiled(x), net(x), atol=1e-5, rtol=1e-5)
