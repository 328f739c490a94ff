import numpy as np
import pytest
import torch
from scipy import ndimage
from torch.nn import functional as F

from models.augment import CamVidAugment, IsbiAugment, elastic_field
from models.datasets import DEFAULT_DATA_ROOT
from models.losses import (
    border_weight_map,
    enet_class_weights,
    separation_weight_map,
    weighted_cross_entropy,
)


def test_weighted_ce_matches_plain_ce_with_unit_weights() -> None:
    logits, target = torch.randn(2, 3, 5, 4), torch.randint(0, 3, (2, 5, 4))
    ours = weighted_cross_entropy(logits, target, torch.ones(2, 5, 4))
    assert ours.item() == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-5)


def test_weighted_ce_ignores_void_pixels() -> None:
    logits, target = torch.randn(1, 3, 4, 4), torch.randint(0, 3, (1, 4, 4))
    noisy = target.clone()
    noisy[0, 0] = 11
    a = weighted_cross_entropy(logits, noisy, ignore_index=11)
    keep = noisy != 11
    b = F.cross_entropy(logits.permute(0, 2, 3, 1)[keep], target[keep])
    assert a.item() == pytest.approx(b.item(), rel=1e-5)


def test_border_weights_peak_between_touching_cells() -> None:
    label = np.ones((20, 41), np.uint8)
    label[:, 20] = 0  # a 1-pixel membrane between two cells
    label[0, :] = label[-1, :] = 0
    w = border_weight_map(label, w0=10, sigma=5)
    assert w[10, 20] > 10  # gap pixel: d1 + d2 = 2 -> 10 * exp(-4 / 50) ~ 9.2 plus w_c
    assert w[10, 5] < w[10, 20]
    assert w[10, 30] == pytest.approx(w[10, 10])  # class balance term only inside cells


def test_separation_weights_mark_the_membrane_midline_between_two_cells() -> None:
    label = np.ones((6, 11), np.uint8)
    label[:, 3:8] = 0  # two cells, columns 0-2 and 8-10, a membrane five pixels wide
    w = separation_weight_map(label, weight=4.0)
    weighted_columns = np.flatnonzero((w > 1).any(axis=0))
    assert set(weighted_columns) <= {5, 6} and weighted_columns.size  # the middle only
    assert np.all(w[:, weighted_columns] == 5.0) and np.all(w[label == 1] == 1.0)
    assert np.all(separation_weight_map(np.ones((4, 4), np.uint8)) == 1.0)  # one cell: none


def test_border_and_separation_weights_are_exclusive() -> None:
    import models.tasks as tasks

    task = tasks.get_task("unet-isbi", DEFAULT_DATA_ROOT)
    with pytest.raises(ValueError, match="not both"):
        tasks.build_data(task, DEFAULT_DATA_ROOT, 64, 1, 0, True, separation_weight=5.0)


def test_enet_weights_favour_rare_classes() -> None:
    labels = np.array([0] * 90 + [1] * 10 + [11] * 5)
    w = enet_class_weights(labels, num_classes=2)
    assert w[1] > w[0] > 1


def test_elastic_field_shape_and_scale() -> None:
    rng = np.random.default_rng(0)
    fields = np.stack([elastic_field((64, 80), rng, grid=3, sigma=10) for _ in range(50)])
    assert fields.shape == (50, 2, 64, 80)
    assert 5 < fields.std() < 15


def test_elastic_field_equals_a_cubic_zoom_of_the_coarse_grid() -> None:
    # The separable matrix form must be the same interpolation as zooming in 2D.
    coarse = np.random.default_rng(3).normal(0.0, 10.0, size=(2, 3, 3))
    expected = ndimage.zoom(coarse, (1, 70 / 3, 90 / 3), order=3, mode="nearest", grid_mode=True)
    field = elastic_field((70, 90), np.random.default_rng(3), grid=3, sigma=10.0)
    assert field.shape == (2, 70, 90)
    np.testing.assert_allclose(field, expected[:, :70, :90], atol=1e-9)


def test_isbi_augment_keeps_labels_binary_and_is_seeded() -> None:
    rng_image = np.random.default_rng(1)
    image = rng_image.integers(0, 256, (96, 96), dtype=np.uint8)
    label = (image > 100).astype(np.uint8)
    aug = IsbiAugment(crop=64)
    a = aug(image, label, None, np.random.default_rng(5))
    b = aug(image, label, None, np.random.default_rng(5))
    assert a[0].shape == a[1].shape == (64, 64)
    assert set(np.unique(a[1])) <= {0, 1}
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_camvid_augment_pads_small_scales_with_void() -> None:
    image = np.zeros((36, 48, 3), np.uint8)
    label = np.zeros((36, 48), np.uint8)
    aug = CamVidAugment(crop=64, scale=(1.0, 1.0), void=11)
    img, lab, _ = aug(image, label, None, np.random.default_rng(0))
    assert img.shape == (64, 64, 3) and lab.shape == (64, 64)
    assert (lab == 11).any() and (lab == 0).any()
