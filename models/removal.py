"""Head-lesion removal: localise, mask, inpaint; where the classifier still calls a removed class
on the result, localise again on the result and repaint with the grown mask (``rounds``).

One round is the factory's first design: the maps of the classes to remove (models/cam.py) ->
one union mask -> the DiT fills it (models/inpaint.py). A mask from a class map covers only
part of a lesion (docs/benchmarks.md, sample fidelity), and a partly
covered lesion is partly still there. So after a round the classifier looks at the result;
on each image where it still calls a removed class, the map of that class *on the result*
points at what is left, that mask joins the union, and the image is filled again from its
original with the grown union (one coherent fill, the same seed). Later rounds may aim lower than
the call (``target`` x the threshold): a class the classifier no longer calls may still be half
there, and measured on the phantom pushing on removes more of it. This is adversarial erasing
(Wei et al., "Object Region Mining with Adversarial Erasing", CVPR 2017) used to finish a
removal rather than to grow a segmentation. A grown union larger than ``MaskConfig.max_area`` is
not taken: the image keeps its previous round, and the removal check (tasks/augment.verdict)
then says the class is still called.

The findings an image keeps (its tail findings, and any head finding the knowledge step keeps)
are never repainted: their own maps on the original mark a protected region that every round's
mask leaves out (``MaskConfig.protect``). Without it a later round, pushing the removed class's
probability lower, reaches for whatever else the classifier links to it (on the phantom, four
rounds without protection lost about a quarter of the tail lesions beside a head removal; the
figures are in docs/benchmarks.md).

With ``placement="random"`` (the control) every round's mask is moved at random, so the
control gets as many rounds, and as much area, as the method it controls for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from models.cam import LocaliseConfig, removal_masks
from models.masks import MaskConfig, MaskResult
from models.inpaint import InpaintConfig, inpaint
from models.training import predict_probs


@dataclass(frozen=True)
class Removal:
    masks: list[MaskResult]  # per image: the final union mask, or why there is none (outcome != "ok")
    generated: torch.Tensor  # (n_ok, 1, H, W): the results of the images whose outcome is "ok", in order
    probs: np.ndarray  # (n_ok, K): the classifier's probabilities on ``generated``
    rounds: list[int]  # per "ok" image: the rounds whose masks it holds (1 = the first mask was enough)

    @property
    def ok(self) -> list[int]:
        return [i for i, m in enumerate(self.masks) if m.outcome == "ok"]


# fill(images (n, 1, H, W) in [0, 1], masks (n, 1, H, W) with 1 = regenerate, seeds) -> filled images
Fill = Callable[[torch.Tensor, torch.Tensor, list[int]], torch.Tensor]


def dit_fill(dit, scheduler, config: InpaintConfig) -> Fill:
    """The product's fill: the DiT sampler (models/inpaint.py), each image with its own seeded generator."""
    def fill(images: torch.Tensor, masks: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        return inpaint(dit, scheduler, images, masks, config, [torch.Generator().manual_seed(s) for s in seeds])
    return fill


def remove_lesions(classifier: torch.nn.Module, images: torch.Tensor, remove: list[list[int]], seeds: list[int],
                   fill: Fill, *, method: str, mask: MaskConfig, localise: LocaliseConfig, thresholds: list[float],
                   priors: dict[int, np.ndarray] | None = None, rounds: int = 1, target: float = 1.0,
                   probs: np.ndarray | None = None, keep: list[list[int]] | None = None,
                   progress: Callable[[str], None] | None = None) -> Removal:
    """Remove the classes ``remove[i]`` from each of the (N, 1, H, W) ``images`` in [0, 1]:
    up to ``rounds`` localise -> fill passes. ``probs`` are the classifier's probabilities on
    ``images`` when the caller has them; ``seeds`` give each image its own fill and, for the
    random control, its mask placement. Later rounds go on while a removed class's probability
    is at least ``target`` x its threshold (1: until the classifier no longer calls it; lower
    pushes on past the call, to what the classifier still half sees). ``keep[i]`` are the classes
    image i keeps (its findings not removed): where their maps on the original point
    (``MaskConfig.protect``) no round repaints. ``progress`` gets a line after the masks and after
    each round's fill (a batch on a CPU takes minutes)."""
    if rounds < 1 or not 0 < target <= 1:
        raise ValueError("rounds must be at least 1 and 0 < target <= 1")
    if len(seeds) != len(remove) or len(remove) != images.shape[0]:
        raise ValueError("give one list of classes to remove and one seed per image")
    cut = np.asarray(thresholds) * target  # later rounds: which classes are still there
    first = removal_masks(classifier, images, remove, method, mask, seeds=seeds, localise=localise,
                          priors=priors, thresholds=thresholds, probs=probs, keep=keep)
    ok = [i for i, m in enumerate(first) if m.outcome == "ok"]
    say = progress or (lambda text: None)
    say(f"masks for {len(ok)} of {len(first)} images")
    protected = {i: first[i].protected if first[i].protected is not None else np.zeros_like(first[i].mask) for i in ok}
    union = {i: first[i].mask for i in ok}
    used = {i: 1 for i in ok}
    results = images.clone()
    if ok:
        results[ok] = _fill_rows(fill, images, union, ok, seeds)
        say(f"round 1 of at most {rounds}: {len(ok)} images filled")
    after = predict_probs(classifier, results[ok]) if ok else np.zeros((0, len(cut)), np.float32)
    after_of = dict(zip(ok, after))
    for r in range(2, rounds + 1):
        still = {i: [c for c in remove[i] if after_of[i][c] >= cut[c]] for i in ok}
        again = [i for i in ok if still[i]]
        if not again:
            break
        found = removal_masks(classifier, results[again], [still[i] for i in again], method, mask,
                              seeds=[seeds[i] + r for i in again], localise=localise, priors=priors,
                              thresholds=list(cut), probs=np.stack([after_of[i] for i in again]))
        grown = []
        for i, m in zip(again, found):
            bigger = (union[i] | m.mask) & ~protected[i]
            if m.outcome == "ok" and bigger.mean() <= mask.max_area and (bigger & ~union[i]).any():
                union[i], used[i] = bigger, r
                grown.append(i)
        if not grown:
            break
        results[grown] = _fill_rows(fill, images, union, grown, seeds)
        say(f"round {r} of at most {rounds}: {len(grown)} images filled again with grown masks")
        for i, p in zip(grown, predict_probs(classifier, results[grown])):
            after_of[i] = p
    masks = [MaskResult(union[i], "ok", float(union[i].mean()), protected[i]) if i in union else m
             for i, m in enumerate(first)]
    probs_after = np.stack([after_of[i] for i in ok]) if ok else np.zeros((0, len(cut)), np.float32)
    return Removal(masks, results[ok], probs_after, [used[i] for i in ok])


def kept_classes(labels: np.ndarray, remove: list[list[int]]) -> list[list[int]]:
    """Per image, the classes it keeps: present in its (N, K) label rows (1.0) and not removed."""
    return [[int(k) for k in np.nonzero(np.asarray(row) == 1.0)[0] if k not in set(gone)]
            for row, gone in zip(labels, remove)]


def _fill_rows(fill: Fill, images: torch.Tensor, union: dict[int, np.ndarray], rows: list[int],
               seeds: list[int]) -> torch.Tensor:
    """(len(rows), 1, H, W): the original ``images[rows]`` filled under their ``union`` masks,
    each with its own seed."""
    masks = torch.from_numpy(np.stack([union[i] for i in rows])[:, None].astype(np.float32))
    return fill(images[rows], masks, [seeds[i] for i in rows])
