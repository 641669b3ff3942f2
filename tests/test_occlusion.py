"""Counterfactual infill maps: the map peaks where filling in the film removes the class."""

import numpy as np
import pytest
import torch

from models.cam import LocaliseConfig
from models.occlusion import infill_maps, smooth_infill, windows

_WINDOWS = {"window": LocaliseConfig().window, "stride": LocaliseConfig().stride}  # the product's


class _BrightSpotDetector(torch.nn.Module):
    """Class 0's logit grows with the brightest 4x4 patch; class 1's with the darkest."""

    def forward(self, x):
        patch = torch.nn.functional.avg_pool2d(x, 4, 1)
        return torch.stack([20 * (patch.amax(dim=(1, 2, 3)) - 0.5), 20 * (0.5 - patch.amin(dim=(1, 2, 3)))], dim=1)


def _film(cy, cx, size=64):
    yy, xx = np.mgrid[0:size, 0:size]
    base = 0.3 + 0.002 * yy  # a smooth gradient, like soft tissue
    spot = 0.6 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 3.0**2))
    return torch.from_numpy((base + spot).astype(np.float32))[None, None]


def test_smooth_infill_removes_a_spot_and_keeps_the_outside():
    image, mask = _film(30, 30), torch.zeros(1, 1, 64, 64)
    mask[..., 20:40, 20:40] = 1.0
    filled = smooth_infill(image, mask)
    assert torch.equal(filled[mask == 0], image[mask == 0])
    assert filled[0, 0, 30, 30] < image[0, 0, 30, 30] - 0.4  # the spot is gone
    assert abs(float(filled[0, 0, 30, 30]) - (0.3 + 0.002 * 30)) < 0.05  # the tissue around it stays


@pytest.mark.parametrize("spot", [(16, 44), (46, 20)])
def test_infill_map_peaks_on_the_evidence(spot):
    maps = infill_maps(_BrightSpotDetector(), torch.cat([_film(*spot), _film(*spot)]), [0, 1], **_WINDOWS)
    peak = np.unravel_index(np.argmax(maps[0]), maps[0].shape)
    assert abs(peak[0] - spot[0]) <= 8 and abs(peak[1] - spot[1]) <= 8 and maps[0].max() == pytest.approx(1.0)
    assert maps.shape == (2, 64, 64) and np.isfinite(maps).all() and maps.min() >= 0


def test_windows_cover_the_image():
    boxes = windows(64, 0.25, 0.5)
    covered = np.zeros((64, 64), bool)
    for top, left, side in boxes:
        covered[top:top + side, left:left + side] = True
    assert covered.all() and len(boxes) == 49


@pytest.mark.parametrize("spot", [(13, 45), (30, 30), (46, 19), (22, 37)])
def test_smoothed_map_peaks_on_the_spot_not_on_a_cell_corner(spot):
    """Windows 16 px wide every 8 px: unsmoothed, the maximum lies on a cell's corner up to 6 px off."""
    wide = infill_maps(_BrightSpotDetector(), _film(*spot), [0], window=0.25, stride=_WINDOWS["stride"])[0]
    peak = np.unravel_index(np.argmax(wide), (64, 64))
    assert abs(peak[0] - spot[0]) <= 2 and abs(peak[1] - spot[1]) <= 2


def test_classes_of_one_image_share_its_windows_and_match_one_at_a_time():
    a, b = _film(16, 44), _film(46, 20)
    together = infill_maps(_BrightSpotDetector(), torch.cat([a, a, b]), [0, 1, 0], **_WINDOWS)
    alone = np.concatenate([infill_maps(_BrightSpotDetector(), x, [c], **_WINDOWS) for x, c in ((a, 0), (a, 1), (b, 0))])
    np.testing.assert_allclose(together, alone, atol=1e-6)
