"""The augment settings: every option of the map, mask, sampler and removal check, checked at load."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from models.cam import LocaliseConfig, MAP_METHODS, MaskConfig
from models.inpaint import InpaintConfig


OOD_METHODS = ("features", "reconstruction")


@dataclass(frozen=True)
class AugmentSettings:
    batch_size: int = 64  # images per task (32-128: Prefect costs ~10 ms per task)
    cam_method: str = "infill"  # class maps: "infill" (counterfactual occlusion), a Grad-CAM variant or "attention"
    localise: LocaliseConfig = field(default_factory=LocaliseConfig)  # layers, border, prior, gate
    mask: MaskConfig = field(default_factory=MaskConfig)
    inpaint: InpaintConfig = field(default_factory=InpaintConfig)
    removal_rounds: int = 4  # localise -> inpaint passes; a pass re-localises on the result where a removed class is still seen
    removal_target: float = 0.25  # passes after the first go on while a removed class's probability >= this x its threshold
    guidance: float = 2.0  # label-conditioned generator: classifier-free guidance weight (1 = none); steps: inpaint.steps
    quality_max_z: float = 3.0  # robust z of the NN distance to real images; above -> accepted = False
    tail_margin: float = 0.1  # a kept tail class may fall below its threshold by at most this much
    verify_removal: bool = True  # accept only rows whose removal the classifier confirms; False: quality alone
    ood_filter: bool = True  # reject rows that score further from real films than held-out real images do (models/ood.py)
    ood_method: str = "features"  # "features": classifier-feature Mahalanobis; "reconstruction": the normal DiT's (not for a label-conditioned generator)
    ood_false_rejection: float = 0.05  # share of the dataset's val images the OOD threshold would reject
    seed: int = 0  # mixed into every image's seed
    max_images: int | None = None  # cap on candidates (smallest output ids first); None = all
    variants: int = 1  # generated images per parent, each with its own seed (more rows from the same parents)
    parallel: int = 1  # batches in flight at once; the run holds as many `gpu` slots (at most the limit) throughout
    runner: str = "local"  # where batches run: "local" (the flow's threads) or "dask" (the cluster at dask_address)
    dask_address: str | None = None  # runner "dask": the scheduler, tcp://HOST:8786
    dask_resource: str | None = "GPU"  # runner "dask": the worker resource each batch takes one of; null: none
    batch_timeout_s: float = 7200.0  # a batch not done this long after the run waits on it fails the run, saying so
    min_class_auroc: float = 0.7  # a head class whose val AUROC is below this is kept, not removed (0: no gate)

    @classmethod
    def from_dict(cls, data: dict) -> "AugmentSettings":
        data = dict(data)
        data["mask"] = MaskConfig(**data.get("mask", {}))
        data["localise"] = LocaliseConfig(**data.get("localise", {}))
        data["inpaint"] = InpaintConfig(**data.get("inpaint", {}))
        return cls(**data)

    def __post_init__(self) -> None:
        if self.cam_method not in MAP_METHODS:  # at load, not inside the first batch
            raise ValueError(f"augment.cam_method must be one of {', '.join(MAP_METHODS)}, not {self.cam_method!r}")
        if self.runner not in ("local", "dask"):
            raise ValueError(f"augment.runner must be 'local' or 'dask', not {self.runner!r}")
        if self.runner == "dask" and not self.dask_address:
            raise ValueError("augment.runner 'dask' needs augment.dask_address, the scheduler (tcp://HOST:8786)")
        if self.ood_method not in OOD_METHODS:
            raise ValueError(f"augment.ood_method must be one of {', '.join(OOD_METHODS)}, not {self.ood_method!r}")
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
