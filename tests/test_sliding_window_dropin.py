"""medseg's sliding window as a drop-in for MONAI's: every argument and output kind of
``monai.inferers.sliding_window_inference`` gives MONAI's values (to 1e-5), gradients included."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.inferers import Inferer
from monai.inferers import SlidingWindowInferer as MonaiInferer
from monai.inferers import sliding_window_inference as monai_sliding_window

from medseg.inference import SlidingWindowInferer, sliding_window_inference

TOL = {"atol": 1e-5, "rtol": 1e-5}


def _close(ours, theirs) -> None:
    """Equal structure (tensor, tuple or dict) and values within 1e-5."""
    assert type(ours) is type(theirs) or isinstance(ours, torch.Tensor) and isinstance(theirs, torch.Tensor)
    if isinstance(theirs, dict):
        assert list(ours) == list(theirs)
        for key in theirs:
            torch.testing.assert_close(ours[key], theirs[key], **TOL)
    elif isinstance(theirs, tuple):
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b, **TOL)
    else:
        torch.testing.assert_close(torch.as_tensor(ours), torch.as_tensor(theirs), **TOL)


def _both(*args, **kwargs):
    return sliding_window_inference(*args, **kwargs), monai_sliding_window(*args, **kwargs)


@pytest.fixture
def conv() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Conv3d(2, 3, 3, padding=1)


def _multi_resolution(conv: torch.nn.Module):
    def predictor(x):
        y = conv(x)
        return y, F.avg_pool3d(y, 2), F.interpolate(y[:, :1], scale_factor=2, mode="nearest")

    return predictor


@pytest.mark.parametrize("shape", [(2, 2, 20, 24, 16), (1, 2, 6, 24, 16)], ids=["windows", "padded axis"])
def test_tuple_and_dict_outputs_at_other_resolutions_equal_monai(conv, shape):
    torch.manual_seed(1)
    x = torch.randn(shape)
    predictor = _multi_resolution(conv)
    kwargs = {"overlap": 0.5, "mode": "gaussian"}
    with torch.no_grad():
        ours, theirs = _both(x, (8, 8, 8), 3, predictor, **kwargs)
        assert tuple(ours[0].shape[2:]) == shape[2:] and tuple(ours[2].shape[2:]) == tuple(2 * s for s in shape[2:])
        _close(ours, theirs)  # shapes included: the pooled output of the padded case is MONAI's too
        as_dict = lambda w: dict(zip(("a", "c", "b"), predictor(w)))  # noqa: E731 (keys come back sorted)
        _close(*_both(x, (8, 8, 8), 3, as_dict, **kwargs))


def test_gradients_flow_as_in_monai(conv):
    x = torch.randn(1, 2, 14, 12, 10)
    grads = []
    for fn in (sliding_window_inference, monai_sliding_window):
        conv.zero_grad()
        inputs = x.clone().requires_grad_(True)
        out = fn(inputs, (8, 8, 8), 2, conv, overlap=0.5, mode="gaussian")
        assert out.requires_grad
        (out * torch.linspace(0, 1, out.numel()).view_as(out)).sum().backward()
        grads.append((out.detach(), inputs.grad.clone(), conv.weight.grad.clone()))
    for ours, theirs in zip(*grads):
        torch.testing.assert_close(ours, theirs, **TOL)


def test_metatensor_keeps_its_metadata():
    affine = torch.diag(torch.tensor([2.0, 3.0, 4.0, 1.0]))
    x = MetaTensor(torch.randn(1, 1, 12, 10, 9), affine=affine, meta={"name": "case_001"})
    ours, theirs = _both(x, (8, 8, 8), 2, lambda w: w * 3 + 1, overlap=0.25, mode="gaussian")
    assert isinstance(ours, MetaTensor)
    torch.testing.assert_close(ours.affine, affine.double())
    assert ours.meta["name"] == "case_001"
    _close(ours.as_tensor(), theirs.as_tensor())
    torch.testing.assert_close(ours.as_tensor(), x.as_tensor() * 3 + 1, **TOL)


def test_float16_predictor_accumulates_in_float32(conv):
    x = torch.randn(1, 2, 13, 11, 10)
    with torch.no_grad():
        ours, theirs = _both(x, (8, 8, 8), 2, lambda w: conv(w).half(), overlap=0.5, mode="gaussian")
    assert ours.dtype == torch.float32
    _close(ours, theirs)


def test_roi_weight_map_and_process_fn_equal_monai(conv):
    torch.manual_seed(2)
    x = torch.randn(2, 2, 16, 12, 10)
    weights = torch.rand(8, 8, 8) + 0.1

    def process(outputs, windows, w):  # doubles the outputs, squares the weights, as a user hook may
        return tuple(o * 2 for o in outputs), w**2

    with torch.no_grad():
        _close(*_both(x, (8, 8, 8), 3, conv, 0.5, roi_weight_map=weights))
        _close(*_both(x, (8, 8, 8), 3, conv, 0.5, mode="gaussian", process_fn=process))


@pytest.mark.parametrize(("steps", "dim"), [(1, -1), (2, 0), (3, 1)])
def test_buffer_steps_equal_monai(conv, steps, dim):
    torch.manual_seed(3)
    x = torch.randn(2, 2, 19, 16, 21)
    with torch.no_grad():
        _close(*_both(x, (8, 8, 8), 3, conv, 0.4, "gaussian", buffer_steps=steps, buffer_dim=dim))


def test_with_coord_args_kwargs_and_condition_equal_monai():
    x = torch.randn(2, 1, 11, 9)
    condition = torch.randn(2, 1, 11, 9)

    def predictor(w, coords, scale, *, offset, condition):
        rows = torch.tensor([c[2].start + 10 * c[0].start for c in coords], dtype=w.dtype).view(-1, 1, 1, 1)
        return w * scale + offset + condition + rows

    _close(*_both(x, (4, 5), 3, predictor, 0.5, "gaussian", 0.125, "constant", 0.0, None, None, False, None,
                  None, None, -1, True, 2.0, offset=1.0, condition=condition))


def test_inferer_is_monais_with_medseg_inside(conv):
    x = torch.randn(1, 2, 17, 12, 10)
    ours = SlidingWindowInferer((8, 8, 8), 2, 0.5, "gaussian", cache_roi_weight_map=True, cpu_thresh=10)
    assert isinstance(ours, Inferer)
    with torch.no_grad():
        _close(ours(x, conv), MonaiInferer((8, 8, 8), 2, 0.5, "gaussian", cache_roi_weight_map=True)(x, conv))
        # per-call overrides, as MONAI's __call__ takes them
        _close(ours(x, conv, buffer_steps=1, buffer_dim=0), monai_sliding_window(x, (8, 8, 8), 2, conv, 0.5, "gaussian"))


def test_argument_errors_name_the_argument():
    x = torch.zeros(1, 1, 8, 8)
    with pytest.raises(ValueError, match="inputs must have 5 dimensions"):
        sliding_window_inference(torch.zeros(1, 8, 8, 8), (4, 4, 4), 1, lambda w: w)
    with pytest.raises(ValueError, match="buffer_dim must be in"):
        sliding_window_inference(x, (4, 4), 1, lambda w: w, buffer_steps=1, buffer_dim=2)
    with pytest.raises(ValueError, match="buffer_steps needs outputs at the input's resolution"):
        sliding_window_inference(x, (4, 4), 1, lambda w: w[:, :, ::2, ::2], buffer_steps=1)
    with pytest.raises(ValueError, match="mode"):
        SlidingWindowInferer((4, 4), mode="gausian")
