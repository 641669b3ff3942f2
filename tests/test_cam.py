"""Grad-CAM maps and masks: batched = single, methods x models x sizes, mask rules."""

from dataclasses import replace

import numpy as np
import pytest
import torch

import models  # noqa: F401
import timm
from models.cam import removal_masks
from models.gradcam import cam_maps, default_target_layer
from models.masks import MaskConfig, map_to_mask, otsu_threshold, protected_region, relocate, union_mask


def _net(name, size, **kw):
    torch.manual_seed(0)
    extra = {"img_size": size} if name.startswith("vit") else {}
    return timm.create_model(name, pretrained=False, in_chans=1, num_classes=3, **extra, **kw).eval()


@pytest.mark.parametrize("size,expected", [(64, "layer2"), (128, "layer3"), (256, "layer4")])
def test_default_target_layer_keeps_maps_at_least_8_wide(size, expected):
    assert default_target_layer(_net("resnet18", size), size)[0] == expected


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_b0", "vit_tiny_patch16_224"])
@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "layercam", "eigencam"])
@pytest.mark.parametrize("size", [64, 96])
def test_cam_maps_for_methods_models_and_sizes(name, method, size):
    net = _net(name, size)
    images = torch.rand(3, 1, size, size, generator=torch.Generator().manual_seed(1))
    maps = cam_maps(net, images, [0, 1, 2], method)
    assert maps.shape == (3, size, size) and np.isfinite(maps).all()
    assert maps.min() >= 0 and maps.max() <= 1 + 1e-5


@pytest.mark.parametrize("name", ["resnet18", "vit_tiny_patch16_224"])
def test_batched_cam_equals_single_image_cam(name):
    net = _net(name, 64)
    images = torch.rand(4, 1, 64, 64, generator=torch.Generator().manual_seed(2))
    classes = [0, 2, 1, 0]
    batched = cam_maps(net, images, classes)
    single = np.stack([cam_maps(net, images[i:i + 1], [c])[0] for i, c in enumerate(classes)])
    assert np.allclose(batched, single, atol=1e-4)


def _blob(cy, cx, size=64, sigma=4.0):
    yy, xx = np.mgrid[0:size, 0:size]
    return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2)).astype(np.float32)


def test_map_to_mask_threshold_otsu_and_dilation():
    cam = _blob(20, 30)
    tight = map_to_mask(cam, MaskConfig(threshold=0.5, dilate_px=0))
    assert tight[20, 30] and not tight[0, 0] and not tight[20, 45]
    grown = map_to_mask(cam, MaskConfig(threshold=0.5, dilate_px=3))
    assert grown.sum() > tight.sum() and (grown | tight).sum() == grown.sum()
    bimodal = np.concatenate([np.full(500, 0.1), np.full(500, 0.8)])
    assert 0.1 < otsu_threshold(bimodal) < 0.8
    otsu = map_to_mask(cam, MaskConfig(method="otsu", dilate_px=0))
    assert otsu[20, 30] and not otsu[0, 0]
    assert not map_to_mask(np.zeros((8, 8), np.float32), MaskConfig()).any()


def test_union_and_area_outcomes():
    config = MaskConfig(threshold=0.5, dilate_px=0, min_area=0.005, max_area=0.35)
    two = union_mask([_blob(15, 15), _blob(45, 45)], (64, 64), config)
    assert two.outcome == "ok" and two.mask[15, 15] and two.mask[45, 45]
    assert union_mask([np.zeros((64, 64), np.float32)], (64, 64), config).outcome == "empty"
    huge = union_mask([_blob(32, 32, sigma=40.0)], (64, 64), config)
    assert huge.outcome == "too_large" and not huge.mask.any() and huge.area > 0.35
    assert union_mask([], (64, 64), config).outcome == "empty"


def test_a_kept_finding_is_left_out_of_the_mask():
    config = MaskConfig(threshold=0.5, dilate_px=0, min_area=0.005, max_area=0.35, protect=0.5)
    head, tail = _blob(20, 20), _blob(44, 44)
    protected = protected_region([tail], (64, 64), config)
    assert protected[44, 44] and not protected[20, 20]
    both = union_mask([head, tail], (64, 64), config, protected)
    assert both.outcome == "ok" and both.mask[20, 20] and not (both.mask & protected).any()
    on_kept = union_mask([tail], (64, 64), config, protected)
    assert on_kept.outcome == "on_kept" and not on_kept.mask.any() and on_kept.protected is protected
    assert not protected_region([tail], (64, 64), replace(config, protect=0.0)).any()
    # where the finding being removed has the stronger map, the pixel is not protected
    wide = _blob(30, 30, sigma=8.0)
    overlapping = protected_region([wide], (64, 64), config, removed=[_blob(24, 24)])
    assert protected_region([wide], (64, 64), config)[25, 25] and not overlapping[25, 25] and overlapping[34, 34]
    with pytest.raises(ValueError, match="protect"):
        MaskConfig(protect=1.0)


def test_removal_masks_batch_one_call_per_pair():
    net = _net("resnet18", 64)
    images = torch.rand(3, 1, 64, 64, generator=torch.Generator().manual_seed(3))
    results = removal_masks(net, images, [[0], [], [1, 2]], config=MaskConfig(max_area=1.0))
    assert [r.mask.shape for r in results] == [(64, 64)] * 3
    assert results[1].outcome == "empty" and not results[1].mask.any()
    with pytest.raises(ValueError, match="one list"):
        removal_masks(net, images, [[0]])
    moved = removal_masks(net, images, [[0], [], [1, 2]], config=MaskConfig(max_area=1.0, placement="random"),
                          seeds=[5, 6, 7])
    assert [m.mask.sum() for m in moved] == [r.mask.sum() for r in results]
    assert [m.outcome for m in moved] == [r.outcome for r in results]
    with pytest.raises(ValueError, match="one seed per image"):
        removal_masks(net, images, [[0], [], [1]], config=MaskConfig(placement="random"))


def test_relocate_keeps_shape_and_area_and_is_seeded():
    mask = np.zeros((32, 32), dtype=bool)
    mask[3:9, 20:30] = True
    mask[9, 22] = True  # not a plain rectangle
    moved = [relocate(mask, np.random.default_rng(s)) for s in range(6)]
    rows, cols = np.nonzero(mask)
    crop = mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    for m in moved:
        assert m.sum() == mask.sum() and m.shape == mask.shape
        r, c = np.nonzero(m)
        assert np.array_equal(m[r.min():r.max() + 1, c.min():c.max() + 1], crop)
    assert len({m.tobytes() for m in moved}) > 1  # different seeds, different places
    assert np.array_equal(relocate(mask, np.random.default_rng(4)), moved[4])
    assert not relocate(np.zeros((8, 8), dtype=bool), np.random.default_rng(0)).any()
    with pytest.raises(ValueError, match="placement"):
        MaskConfig(placement="anywhere")


class _StrideEight(torch.nn.Module):
    """Three 3x3 stride-2 padded box filters (cell k of the last one sees input pixel 8k and its
    neighbours, as in a ResNet), global average pool, one positive logit per class."""

    def __init__(self):
        super().__init__()
        convs = [torch.nn.Conv2d(1, 1, 3, stride=2, padding=1, bias=False) for _ in range(3)]
        for conv in convs:
            torch.nn.init.constant_(conv.weight, 1 / 9)
        self.features = torch.nn.Sequential(*convs)
        self.head = torch.nn.Linear(1, 2)
        torch.nn.init.constant_(self.head.weight, 1.0)
        torch.nn.init.zeros_(self.head.bias)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


@pytest.mark.parametrize("cell", [(3, 3), (2, 5), (6, 1)])
def test_cam_peak_sits_where_the_cell_looks_not_half_a_stride_down_right(cell):
    net = _StrideEight().eval()
    image = torch.zeros(1, 1, 64, 64)
    image[0, 0, cell[0] * 8, cell[1] * 8] = 1.0  # only feature cell `cell` sees this pixel
    cam = cam_maps(net, image, [0], "gradcam", target_layer=net.features)[0]
    peak = np.unravel_index(np.argmax(cam), cam.shape)
    assert abs(peak[0] - cell[0] * 8) <= 1 and abs(peak[1] - cell[1] * 8) <= 1  # cv2.resize put it at 8k + 3.5


def test_upsample_aligned_places_cell_centres():
    from models.gradcam import upsample_aligned
    small = np.zeros((1, 4, 4), np.float32)
    small[0, 1, 2] = 1.0
    out = upsample_aligned(small, offset=0.0, stride=16.0, size=64)[0]
    assert np.unravel_index(np.argmax(out), out.shape) == (16, 32) and out.max() == pytest.approx(1.0)
    assert out[16, 40] == pytest.approx(0.5)  # halfway to the next centre


def test_class_maps_apply_border_and_prior():
    from models.cam import LocaliseConfig, class_maps
    net = _StrideEight().eval()
    image = torch.zeros(2, 1, 64, 64)
    image[:, 0, 1, 1] = 1.0  # a response at the film's corner
    image[:, 0, 40, 24] = 0.5  # and a weaker one inside
    plain = class_maps(net, image, [0, 0], LocaliseConfig(layers=("features",), prior_weight=0, gate=False), "gradcam")
    assert np.unravel_index(np.argmax(plain[0]), (64, 64))[0] < 8  # the corner wins without help
    bordered = class_maps(net, image, [0, 0], LocaliseConfig(layers=("features",), border=0.2, prior_weight=0,
                                                             gate=False), "gradcam")
    assert bordered[0, :13].max() == 0 and bordered[0, :, :13].max() == 0
    assert np.unravel_index(np.argmax(bordered[0]), (64, 64)) == (40, 24)
    prior = np.zeros((8, 8), np.float32)
    prior[4:6, 2:4] = 1.0  # class 1 lies around (40, 24) on 64 px; class 0 has no prior
    both = class_maps(net, image, [0, 1], LocaliseConfig(layers=("features",), gate=False), "gradcam",
                      priors={1: prior})
    assert np.allclose(both[0], plain[0])
    assert abs(np.unravel_index(np.argmax(both[1]), (64, 64))[0] - 40) <= 4 and both[1].max() == pytest.approx(1.0)


def test_gate_makes_no_mask_for_a_class_the_classifier_does_not_call():
    from models.cam import LocaliseConfig
    net = _StrideEight().eval()
    images = torch.zeros(2, 1, 64, 64)
    images[0, 0, 24:40, 24:40] = 1.0  # image 0 responds strongly, image 1 (blank) not at all
    probs = torch.sigmoid(net(images)).detach().numpy()  # both classes share one logit here
    cut = [float(probs[:, 0].mean())] * 2  # image 0 is called, image 1 is not
    gated = LocaliseConfig(layers=("features",), prior_weight=0)
    results = removal_masks(net, images, [[0, 1], [0]], config=MaskConfig(max_area=1.0), localise=gated,
                            thresholds=cut)
    assert results[0].outcome == "ok" and results[0].mask[32, 32]
    assert results[1].outcome == "not_detected" and not results[1].mask.any()
    ungated = removal_masks(net, images, [[0, 1], [0]], config=MaskConfig(max_area=1.0),
                            localise=LocaliseConfig(layers=("features",), prior_weight=0, gate=False), thresholds=cut)
    assert ungated[1].outcome != "not_detected"
    with pytest.raises(ValueError):
        LocaliseConfig(border=0.6)


def test_a_layers_receptive_centre_is_measured_once_per_image_size(monkeypatch):
    from models import gradcam

    model = _net("resnet18", 64)
    layer = default_target_layer(model, 64)[1]
    first = gradcam.receptive_centre(model, layer, 64)
    assert first[1] == 8.0  # layer2 of a ResNet at 64 px: 8 cells
    monkeypatch.setattr(gradcam, "_measured_centre", lambda *a: pytest.fail("measured again"))
    assert gradcam.receptive_centre(model, layer, 64) == first
