"""The augment settings: every option of the map, mask, sampler and removal check, checked at load."""

from __future__ import annotations

from dataclasses import asdict, field

from pydantic.dataclasses import dataclass

from models.cam import LocaliseConfig
from models.configs import EngineConfig
from models.masks import MaskConfig
from models.inpaint import InpaintConfig
from models.ood import OODConfig
from tasks.checked import CHECKED, one_of, validated

OOD_METHODS = ("features", "reconstruction")
RUNNERS = ("local", "dask")


@dataclass(frozen=True, config=CHECKED)
class AugmentSettings:
    batch_size: int = 64  # images per task: its unit of work, resume and shard (32-128: Prefect costs ~10 ms per task); the DiT's own batch is engine.rows
    cam_method: one_of("models.cam:MAP_MAKERS") = "infill"  # class maps: "infill" (counterfactual occlusion), a Grad-CAM variant or "attention"
    localise: LocaliseConfig = field(default_factory=LocaliseConfig)  # layers, border, prior, gate
    mask: MaskConfig = field(default_factory=MaskConfig)
    inpaint: InpaintConfig = field(default_factory=InpaintConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)  # the DiT's model batch and compilation (not part of the recipe)
    removal_rounds: int = 4  # localise -> inpaint passes; a pass re-localises on the result where a removed class is still seen
    removal_target: float = 0.25  # passes after the first go on while a removed class's probability >= this x its threshold
    guidance: float = 2.0  # label-conditioned generator: classifier-free guidance weight (1 = none); steps: inpaint.steps
    quality_max_z: float = 3.0  # robust z of the NN distance to real images; above -> accepted = False
    tail_margin: float = 0.1  # a kept tail class may fall below its threshold by at most this much
    verify_removal: bool = True  # accept only rows whose removal the classifier confirms; False: quality alone
    ood_filter: bool = True  # reject rows that score further from real films than held-out real images do (models/ood.py)
    ood_method: one_of("tasks.augment.settings:OOD_METHODS") = "features"  # "features": classifier-feature Mahalanobis; "reconstruction": the normal DiT's (not for a label-conditioned generator)
    ood_false_rejection: float = OODConfig.false_rejection  # share of the dataset's val images the OOD threshold would reject
    seed: int = 0  # mixed into every image's seed
    max_images: int | None = None  # cap on candidates (smallest output ids first); None = all
    variants: int = 1  # generated images per parent, each with its own seed (more rows from the same parents)
    parallel: int = 1  # batches in flight at once; the run holds as many `gpu` slots (at most the limit) throughout
    runner: one_of("tasks.augment.settings:RUNNERS") = "local"  # where batches run: "local" (the flow's threads) or "dask" (the cluster at dask_address)
    dask_address: str | None = None  # runner "dask": the scheduler, tcp://HOST:8786
    dask_resource: str | None = "GPU"  # runner "dask": the worker resource each batch takes one of; null: none
    batch_timeout_s: float = 7200.0  # a batch not done this long after the run waits on it fails the run, saying so
    min_class_auroc: float = 0.7  # a head class whose val AUROC is below this is kept, not removed (0: no gate)

    @classmethod
    def from_dict(cls, data: dict) -> "AugmentSettings":
        return validated(cls, data, "augment")

    def __post_init__(self) -> None:
        if self.runner == "dask" and not self.dask_address:
            raise ValueError("augment.runner 'dask' needs augment.dask_address, the scheduler (tcp://HOST:8786)")
        if not 0 < self.ood_false_rejection < 1:
            raise ValueError("augment.ood_false_rejection must be between 0 and 1")
        if self.parallel < 1 or self.batch_size < 1:
            raise ValueError("augment.parallel and augment.batch_size must be at least 1")
        if self.removal_rounds < 1:
            raise ValueError("augment.removal_rounds must be at least 1 (1 = one mask, no re-localising)")
        if not 0 < self.removal_target <= 1:
            raise ValueError("augment.removal_target must be in (0, 1]: the share of a class's threshold that "
                             "another removal round aims below (1 = until the classifier no longer calls it)")
        if self.variants < 1:
            raise ValueError("augment.variants must be at least 1 (generated images per parent)")
        if not 0 <= self.min_class_auroc < 1:
            raise ValueError("augment.min_class_auroc must be in [0, 1): the val AUROC a class to be removed needs "
                             "(0 turns the classifier gate off)")
        if self.batch_timeout_s <= 0:
            raise ValueError("augment.batch_timeout_s must be positive (seconds a batch may take)")

    def to_dict(self) -> dict:
        return asdict(self)
