"""Removal rounds (models/removal.py): re-localising on the result finishes a removal that one
mask leaves half done, nothing outside the final mask changes, and no round repaints a finding
the image keeps."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from models.cam import LocaliseConfig
from models.masks import MaskConfig
from models.removal import kept_classes, remove_lesions

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


class HeadAndTail(BrightSum):
    """Class 0 (the head finding) counts every bright pixel, so a dimmer tail lesion (0.7) feeds
    it too; class 1 (the tail finding) counts the pixels between 0.6 and 0.8, the tail lesion's."""

    def forward(self, x):
        head = super().forward(x)[:, 0] + 0.5 * 10.0 - 0.5 * 5.0  # called down to 5 units of brightness
        tail = 0.5 * (((x > 0.6) & (x < 0.8)).float().flatten(1).sum(1) - 10.0) + self.anchor
        return torch.stack([head, tail], dim=1)


def test_rounds_do_not_repaint_a_finding_the_image_keeps():
    """With the head blob filled, the tail blob alone still makes the classifier call the head
    class, so round 2 aims at the tail lesion. Kept (``keep``), its own map marks it protected:
    it comes through untouched and still called; without ``keep`` it is painted out."""
    image = _image([((4, 4), 1.0), ((20, 20), 0.7)])
    tail_core = (slice(21, 25), slice(21, 25))
    mask = MaskConfig(dilate_px=2, max_area=0.6)  # both blobs' masks fit the 32 px film

    def run(keep):
        return remove_lesions(HeadAndTail(), image, [[0]], [0], _flat_fill, method="infill", mask=mask,
                              localise=LOCALISE, thresholds=[0.5, 0.5], rounds=3, keep=keep)
    lost, kept = run(None), run([[1]])
    assert lost.rounds == [2] and (lost.generated[0, 0][tail_core] == BACKGROUND).all() and lost.probs[0, 1] < 0.5
    assert kept.masks[0].protected[tail_core].all() and not kept.masks[0].mask[tail_core].any()
    assert torch.equal(kept.generated[0, 0][tail_core], image[0, 0][tail_core]) and kept.probs[0, 1] >= 0.5
    assert kept.masks[0].mask[6, 6]  # the head lesion is still removed
    off = remove_lesions(HeadAndTail(), image, [[0]], [0], _flat_fill, method="infill",
                         mask=replace(mask, protect=0.0), localise=LOCALISE, thresholds=[0.5, 0.5],
                         rounds=3, keep=[[1]])
    assert not off.masks[0].protected.any() and off.probs[0, 1] < 0.5


def test_kept_classes_are_the_present_findings_not_removed():
    labels = np.array([[1.0, 0.0, 1.0, np.nan], [1.0, 1.0, 0.0, 1.0]])
    assert kept_classes(labels, [[0], [3]]) == [[2], [0, 1]]
