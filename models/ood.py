"""Out-of-distribution scores for generated images: two detectors behind one interface
(``score``: higher = further from real films; ``threshold``: the calibrated cut-off; ``what``: how
a verdict names the score).

``FeatureScorer``: the Mahalanobis distance of the classifier's features, at every stage of its
backbone, from Gaussians fitted on real training images (Lee et al., "A simple unified framework
for detecting out-of-distribution samples and adversarial attacks", NeurIPS 2018: their feature
ensemble, class-agnostic here, with Ledoit-Wolf shrinkage as features outnumber images). Each
stage's distance is z-scored on held-out real images and the score is the largest z: early
stages see texture (the 4-px blocks of an undertrained DiT: benchmarks/results/bench_ood.md),
the last sees findings. It does not use the generator, so it can judge any generator's samples,
a label-conditioned DiT's included.

``OODScorer``: reconstruction under the normal-X-ray diffusion model. As in ddpm-ood (Graham et al., "Denoising diffusion models for out-of-distribution
detection", CVPR Workshops 2023): noise an image to a few levels t of the forward chain,
denoise it back with a few DDIM steps, and measure how far the reconstruction is from the
image. An image the model knows comes back close; broken pixels (noise, blank patches, pasted
anatomy in the wrong place) do not. Each level's error is z-scored on held-out real images and
the image's score is the mean z over levels; a threshold set on held-out real images at a
stated false-rejection rate turns the score into a verdict.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models.classifier import stage_features
from models.device import model_device
from models.dit import condition, is_conditioned, predict_noise, to_model_range
from models.sampling import Generators, ddim_step, noised_known


@dataclass(frozen=True)
class OODConfig:
    levels: tuple[int, ...] = (100, 250, 400)  # forward-chain timesteps the image is noised to
    steps: int = 5  # DDIM steps back from each level to the clean estimate
    false_rejection: float = 0.05  # share of held-out real images the threshold rejects

    def __post_init__(self) -> None:
        if not self.levels or self.steps < 1 or not 0 < self.false_rejection < 1:
            raise ValueError("need at least one level, steps >= 1 and 0 < false_rejection < 1")


@torch.no_grad()
def reconstruction_errors(model, scheduler, images01: torch.Tensor, config: OODConfig = OODConfig(),
                          generator: Generators = None) -> np.ndarray:
    """(N, L): mean squared reconstruction error of each image from each level."""
    x0 = to_model_range(images01.float().to(model_device(model)))
    n = x0.shape[0]
    cond = condition(torch.zeros_like(x0), torch.ones_like(x0)) if is_conditioned(model) else None
    errors = []
    for level in config.levels:
        times = sorted({int(round(t)) for t in np.linspace(level, 0, config.steps)}, reverse=True) + [-1]
        x = noised_known(scheduler, x0, times[0], generator)
        for t, t_next in zip(times[:-1], times[1:]):
            eps = predict_noise(model, x, torch.full((n,), t, dtype=torch.long), cond)
            x = ddim_step(scheduler, x, eps, t, t_next)
        errors.append(((x - x0) ** 2).mean(dim=(1, 2, 3)))
    return torch.stack(errors, dim=1).cpu().numpy()


def _calibrated(scores: np.ndarray, false_rejection: float) -> float:
    """The cut-off that rejects ``false_rejection`` of held-out real images' scores."""
    return float(np.quantile(scores, 1 - false_rejection))


def ledoit_wolf(features: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Mean, shrunk covariance and the shrinkage of (N, C) features (Ledoit and Wolf, "A
    well-conditioned estimator for large-dimensional covariance matrices", 2004): the sample
    covariance pulled towards a scaled identity by the amount that minimises the expected error."""
    n, c = features.shape
    mean = features.mean(axis=0)
    x = features - mean
    sample = x.T @ x / n
    mu = np.trace(sample) / c
    target_gap = ((sample - mu * np.eye(c)) ** 2).sum()
    spread = ((x ** 2).sum(axis=1) ** 2).sum() / n ** 2 - (sample ** 2).sum() / n
    shrinkage = float(min(max(spread, 0.0), target_gap) / target_gap) if target_gap > 0 else 1.0
    return mean, (1 - shrinkage) * sample + shrinkage * mu * np.eye(c), shrinkage


class _Filter:
    """The interface both detectors share: ``score`` (higher = further from real films),
    ``threshold`` (calibrated on held-out real images) and ``what`` (the verdict's name for it)."""

    what: str
    threshold: float

    def score(self, images01: torch.Tensor) -> np.ndarray:
        raise NotImplementedError

    def accept(self, images01: torch.Tensor) -> np.ndarray:
        return self.score(images01) <= self.threshold


class FeatureScorer(_Filter):
    """Fit on real training images (one Gaussian per backbone stage) and held-out real images
    (each stage's z, then the threshold at ``false_rejection``); ``score`` is the largest
    per-stage z of an image's Mahalanobis distances."""

    what = "feature z"

    def __init__(self, classifier, reference01: torch.Tensor, calibration01: torch.Tensor,
                 false_rejection: float = OODConfig.false_rejection):
        if reference01.shape[0] < 20 or calibration01.shape[0] < 20:
            raise ValueError("the feature OOD filter needs at least 20 real training images and 20 held-out ones")
        if not 0 < false_rejection < 1:
            raise ValueError("false_rejection must be between 0 and 1")
        self.classifier = classifier
        self.gaussians = []
        for features in self._features(reference01):
            mean, covariance, shrinkage = ledoit_wolf(features)
            self.gaussians.append((mean, np.linalg.inv(covariance), shrinkage))
        distances = self.distances(calibration01)
        self.mean, self.std = distances.mean(axis=0), distances.std(axis=0).clip(min=1e-12)
        self.threshold = _calibrated(self._z(distances), false_rejection)

    def _features(self, images01: torch.Tensor) -> list[np.ndarray]:
        return [f.double().numpy() for f in stage_features(self.classifier, images01)]

    def distances(self, images01: torch.Tensor) -> np.ndarray:
        """(N, stages): each image's Mahalanobis distance at each stage."""
        out = []
        for features, (mean, precision, _) in zip(self._features(images01), self.gaussians):
            gap = features - mean
            out.append(np.sqrt(np.einsum("nc,cd,nd->n", gap, precision, gap).clip(min=0)))
        return np.stack(out, axis=1)

    def _z(self, distances: np.ndarray) -> np.ndarray:
        return ((distances - self.mean) / self.std).max(axis=1)

    def score(self, images01: torch.Tensor) -> np.ndarray:
        return self._z(self.distances(images01))


class OODScorer(_Filter):
    """Fit on held-out real images (the kind the generated ones should pass for); ``score``
    gives the mean z over levels, ``accept`` compares it with the calibrated threshold. A
    label-conditioned generator must not be its own judge: it reconstructs its own artefacts
    better than real films; give it a ``FeatureScorer`` or a normal DiT."""

    what = "reconstruction z"

    def __init__(self, model, scheduler, calibration01: torch.Tensor, config: OODConfig = OODConfig(),
                 seed: int = 0):
        if calibration01.shape[0] < 20:
            raise ValueError("OOD calibration needs at least 20 held-out real images")
        self.model, self.scheduler, self.config, self.seed = model, scheduler, config, seed
        errors = self._errors(calibration01)
        self.mean, self.std = errors.mean(axis=0), errors.std(axis=0).clip(min=1e-12)
        self.threshold = _calibrated(self._z(errors), config.false_rejection)

    def _errors(self, images01: torch.Tensor) -> np.ndarray:
        generators = [torch.Generator().manual_seed(self.seed + i) for i in range(images01.shape[0])]
        return reconstruction_errors(self.model, self.scheduler, images01, self.config, generators)

    def _z(self, errors: np.ndarray) -> np.ndarray:
        return ((errors - self.mean) / self.std).mean(axis=1)

    def score(self, images01: torch.Tensor) -> np.ndarray:
        return self._z(self._errors(images01))
