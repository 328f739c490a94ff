import numpy as np
import pytest
import torch

from models.dilated import CONTEXT_DILATIONS, ContextModule, DilatedConfig, DilatedNet
from models.predict import predict_logits, validate
from models.registry import build_model
from models.unet import UNet, UNetConfig


@pytest.mark.parametrize(("h", "w"), [(32, 32), (48, 80), (16, 112)])
def test_unet_output_matches_input_size(h: int, w: int) -> None:
    model = UNet(UNetConfig(base_width=4, depth=3)).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, h, w))
    assert out.shape == (2, 2, h, w)


def test_unet_upconvs_halve_channels_and_pooling_doubles() -> None:
    model = UNet(UNetConfig(base_width=8, depth=3))
    widths = [block[0].out_channels for block in model.down]
    assert widths == [8, 16, 32, 64]
    assert [(up.in_channels, up.out_channels) for up in model.up] == [(64, 32), (32, 16), (16, 8)]


@pytest.mark.parametrize(("h", "w"), [(37, 53), (17, 9), (360, 481)])
def test_odd_sizes_are_padded_and_cropped_back(h: int, w: int) -> None:
    unet = UNet(UNetConfig(base_width=4, depth=2)).eval()
    dilated = DilatedNet(DilatedConfig(widths=(4, 8, 8))).eval()
    for model, channels in ((unet, 1), (dilated, 3)):
        out = predict_logits(model, torch.randn(1, channels, h, w), model.cfg.size_multiple)
        assert out.shape == (1, model.cfg.num_classes, h, w)


def test_dilated_output_is_input_size_and_front_end_stride_8() -> None:
    model = DilatedNet(DilatedConfig(widths=(4, 8, 8))).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert model.front_end(x).shape == (1, 11, 8, 12)
        assert model(x).shape == (1, 11, 64, 96)


def test_fresh_context_module_is_the_identity() -> None:
    module = ContextModule(11)
    dilations = [m.dilation[0] for m in module.layers if isinstance(m, torch.nn.Conv2d)]
    assert dilations == [*CONTEXT_DILATIONS, 1]
    x = torch.rand(2, 11, 40, 30)  # non-negative, like the rectified scores it receives
    with torch.no_grad():
        assert torch.equal(module(x), x)


def test_context_module_stops_being_identity_after_a_step() -> None:
    module = ContextModule(3)
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    x = torch.rand(1, 3, 20, 20)
    module(x).sub(1).pow(2).mean().backward()
    opt.step()
    with torch.no_grad():
        assert not torch.equal(module(x), x)


def test_registry_rejects_unknown_names_and_options() -> None:
    assert isinstance(build_model("unet", base_width=4, depth=2), UNet)
    with pytest.raises(KeyError):
        build_model("segformer")
    with pytest.raises(TypeError):
        build_model("unet", width=3)


class _LeftHalfIsMembrane(torch.nn.Module):
    """Class 0 on the left half of whatever it sees, class 1 on the right: not invariant."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(x.shape[0], 2, *x.shape[-2:])
        logits[:, 0, :, : x.shape[-1] // 2] = 1.0
        logits[:, 1, :, x.shape[-1] // 2 :] = 1.0
        return logits


def test_validation_views_score_each_flip_and_rotation() -> None:
    image = np.zeros((8, 8), np.uint8)
    label = np.ones((8, 8), np.uint8)
    label[:, :4] = 0  # the model is right on the view as given, wrong on its mirror image
    args = (np.stack([image]), np.stack([label]), [0.5], [0.2], ["membrane", "cell"], 1)
    one, preds, _ = validate(_LeftHalfIsMembrane(), *args)
    eight, preds8, confusion8 = validate(_LeftHalfIsMembrane(), *args, views=8)
    assert confusion8.sum() == 8 * label.size  # every view's pixels counted
    assert one["pixel_error"] == 0.0
    # Exact as given and rotated 180 degrees then mirrored, all wrong mirrored and rotated
    # 180 degrees, half wrong on the four views turned by 90 or 270 degrees.
    assert eight["pixel_error"] == pytest.approx((0 * 2 + 1 * 2 + 0.5 * 4) / 8)
    assert np.array_equal(preds, preds8)  # the maps returned are of the images as given
