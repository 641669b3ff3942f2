"""Removal rounds (models/removal.py): re-localising on the result finishes a removal that one
mask leaves half done, and nothing outside the final mask changes."""

import numpy as np
import pytest
import torch

from models.cam import LocaliseConfig, MaskConfig
from models.removal import remove_lesions

BACKGROUND = 0.2
SIZE = 32
MASK = MaskConfig(dilate_px=2)  # pinned, as LOCALISE: the test images are 32 px, the product defaults are sized for 128
LOCALISE = LocaliseConfig(window=0.25, prior_weight=0.0)


class BrightSum(torch.nn.Module):
    """Class 0 is called (p >= 0.5) when the image holds more than 10 units of brightness above
    0.5 in all; class 1 never is. Two blobs that each pass alone make one removal need two masks."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # a device for predict_probs

    def forward(self, x):
        evidence = (x - 0.5).clamp(min=0).flatten(1).sum(1)
        first = 0.5 * (evidence - 10.0) + self.anchor
        return torch.stack([first, torch.full_like(first, -10.0)], dim=1)


def _image(blobs):
    image = torch.full((1, 1, SIZE, SIZE), BACKGROUND)
    for (top, left), value in blobs:
        image[0, 0, top:top + 6, left:left + 6] = value
    return image


def _flat_fill(images, masks, seeds):
    """A fill that paints the background: a perfect generator for these images."""
    return torch.where(masks > 0.5, torch.full_like(images, BACKGROUND), images)


def _remove(images, rounds, mask=MASK, placement_seeds=None, thresholds=(0.5, 0.5), target=1.0):
    return remove_lesions(BrightSum(), images, [[0]] * len(images), placement_seeds or list(range(len(images))),
                          _flat_fill, method="infill", mask=mask, localise=LOCALISE,
                          thresholds=list(thresholds), rounds=rounds, target=target)


def test_a_second_round_finds_what_the_first_mask_left_and_removes_it():
    two = _image([((4, 4), 1.0), ((22, 22), 0.9)])  # the stronger blob takes the first mask alone
    one_round, three_rounds = _remove(two, 1), _remove(two, 3)
    assert one_round.probs[0, 0] >= 0.5, "the first mask must leave the weaker blob (else this test shows nothing)"
    assert not one_round.masks[0].mask[24, 24]
    assert three_rounds.probs[0, 0] < 0.5 and three_rounds.rounds == [2]
    final = three_rounds.masks[0]
    assert final.outcome == "ok" and final.mask[6, 6] and final.mask[24, 24]
    assert final.mask.sum() > one_round.masks[0].mask.sum() and final.area == pytest.approx(final.mask.mean())
    outside = torch.from_numpy(~final.mask)
    assert torch.equal(three_rounds.generated[0, 0][outside], two[0, 0][outside])


def test_an_image_done_in_one_round_takes_one_and_the_gate_still_holds():
    single = _image([((10, 10), 1.0)])
    normal = _image([])
    result = _remove(torch.cat([single, normal]), 3)
    assert [m.outcome for m in result.masks] == ["ok", "not_detected"]
    assert result.rounds == [1] and result.ok == [0] and result.generated.shape == (1, 1, SIZE, SIZE)
    assert result.probs.shape == (1, 2) and result.probs[0, 0] < 0.5


def test_a_union_that_would_pass_max_area_is_not_taken():
    two = _image([((4, 4), 1.0), ((22, 22), 0.9)])
    first, both = _remove(two, 1).masks[0], _remove(two, 3).masks[0]
    second_alone = (both.mask & ~first.mask).mean()
    cap = 0.25  # each round's own mask fits; their union does not
    assert max(first.area, second_alone) < cap < both.area
    capped = _remove(two, 3, MaskConfig(dilate_px=2, max_area=cap))
    assert capped.rounds == [1] and capped.masks[0].area == pytest.approx(first.area)
    assert capped.probs[0, 0] >= 0.5  # left for the removal check to reject


def test_the_random_control_gets_rounds_and_area_too():
    two = _image([((4, 4), 1.0), ((22, 22), 0.9)])
    control = remove_lesions(BrightSum(), two, [[0]], [7], _flat_fill, method="infill",
                             mask=MaskConfig(dilate_px=2, placement="random"), localise=LocaliseConfig(prior_weight=0.0),
                             thresholds=[0.5, 0.5], rounds=3)
    assert control.masks[0].outcome == "ok" and control.rounds[0] >= 2
    assert control.masks[0].area > _remove(two, 1).masks[0].area
    with pytest.raises(ValueError, match="at least 1"):
        _remove(two, 0)
    with pytest.raises(ValueError, match="one seed per image"):
        remove_lesions(BrightSum(), two, [[0]], [], _flat_fill, method="infill", mask=MASK,
                       localise=LocaliseConfig(), thresholds=[0.5, 0.5])
    assert np.isfinite(control.probs).all()


def test_a_lower_target_goes_on_past_the_call_to_what_the_classifier_still_half_sees():
    """With the class's threshold at 0.95, the first mask leaves p = 0.9: no longer called, but
    the weaker blob is still there. Target 1 stops; target 0.5 (aim below 0.475) takes it out."""
    two = _image([((4, 4), 1.0), ((22, 22), 0.9)])
    stops = _remove(two, 3, thresholds=(0.95, 0.5))
    assert stops.rounds == [1] and 0.5 < stops.probs[0, 0] < 0.95
    goes_on = _remove(two, 3, thresholds=(0.95, 0.5), target=0.5)
    assert goes_on.rounds == [2] and goes_on.probs[0, 0] < 0.475 and goes_on.masks[0].mask[24, 24]
    with pytest.raises(ValueError, match="target"):
        _remove(two, 3, target=0.0)
