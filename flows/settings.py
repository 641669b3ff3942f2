"""Settings: where local state lives, and one YAML file -> frozen, validated dataclasses.

All local state — the demo's Prefect home, the decision cache, default outputs — lives under
one folder, ``$TAILFORGE_HOME`` (default ``./.tailforge``), so a user can move or wipe it and
tests can isolate it. The sections are pydantic dataclasses: types, unknown keys and every
name-valued setting (tasks/checked.py) are checked at load, and an error names the setting's
path and what it accepts. A field's default is its one default; the comment on its line is its
description (`tailforge config --reference`, the JSON Schema: flows/settings_reference.py).
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, field, fields
from pathlib import Path

from pydantic import StrictStr
from pydantic.dataclasses import dataclass

from models.configs import CLASSIFIER_PRESETS, ClassifierConfig, DiTConfig, DiTTrainConfig, TrainConfig
from tasks.checked import CHECKED, one_of, validated
from tasks.knowledge.llm import LLMSettings

HOME_VARIABLE = "TAILFORGE_HOME"
DEFAULT_HOME = ".tailforge"


def tailforge_home() -> Path:
    """The state folder, made absolute (not created)."""
    return Path(os.environ.get(HOME_VARIABLE) or DEFAULT_HOME).expanduser().resolve()


def default_dataset_uri(name: str) -> str:
    """Where a dataset goes when the user names no ``--out``."""
    return str(tailforge_home() / "datasets" / name)


@dataclass(frozen=True, config=CHECKED)
class DatasetSettings:
    source: one_of("tasks.sources:READERS", also=("phantom", "existing")) = "phantom"  # phantom | nih | chexpert | mimic | folder | existing (uri only)
    uri: str | None = None  # the dataset URI (default: $TAILFORGE_HOME/datasets/<name>)
    table: str | None = None  # the source's label table (real sources)
    images: str | None = None  # the folder the table's paths are relative to
    split_csv: str | None = None  # CSV with an image column and 'split' that overrides splits
    size: int = 64  # image side in pixels
    n: int = 600  # phantom images
    seed: int = 0  # phantom seed
    vocab: one_of("tasks.labels:VOCAB_ALIASES") = "nih"  # phantom / folder vocabulary (nih | chexpert)
    tail: tuple[str, ...] | None = None  # explicit tail classes (default: below the median train frequency)
    shard_rows: int = 1024  # rows per Parquet shard
    workers: int = 4  # decoding threads
    allow_missing: bool = False  # ingest even when most sampled image paths have no file (default: stop, wrong folder?)
    follow_symlinks: bool = False  # read symlinks in the images folder that lead outside it (default: path_escape)
    bbox_table: str | None = None  # nih: BBox_List_2017.csv (default: found beside the table)
    views: one_of("tasks.sources:VIEWS") = "frontal"  # chexpert, mimic: frontal | lateral | all
    uncertain: one_of("tasks.labels:UncertainPolicy") = "ignore"  # chexpert, mimic: uncertain (-1) labels become NaN (ignore), 1 (ones) or 0 (zeros)
    blank: one_of("tasks.labels:BlankPolicy") = "ignore"  # chexpert, mimic: blank labels become NaN (ignore) or 0 (zeros)
    split_table: str | None = None  # mimic: *-split.csv (default: found beside the table)
    metadata_table: str | None = None  # mimic: *-metadata.csv (default: found beside the table)
    path_column: str = "Image Index"  # folder: the column of image paths
    label_column: str = "Finding Labels"  # folder: the column of '|'-separated labels
    patient_column: str | None = None  # folder: the patient id column (default: none)
    split_column: str | None = None  # folder: a train/val/test column (default: by patient hash)


def _changed(settings, *names: str) -> bool:
    """Whether any of the settings ``names`` is set apart from its default (a preset sets them)."""
    default = {f.name: f.default for f in fields(settings)}
    return any(getattr(settings, name) != default[name] for name in names)


def _check_processes(section: str, processes: int, batch_size: int) -> None:
    """A section's training processes: at least one, and its batch split evenly over them."""
    if processes < 1 or batch_size % processes:
        raise ValueError(f"{section}.processes must be at least 1 and split {section}.batch_size "
                         f"({batch_size}) evenly, got {processes}")


@dataclass(frozen=True, config=CHECKED)
class ClassifierSettings:
    preset: one_of("models.configs:CLASSIFIER_PRESETS") | None = None  # tiny (resnet18) | small (densenet121, CheXNet's) | base (convnext_base, the paper's): sets the backbone
    backbone: str = "resnet18"  # timm name or a paper alias (resnet50, efficientnet_b0, ...)
    epochs: int = 8  # passes over the train split
    batch_size: int = TrainConfig.batch_size  # images per optimiser step
    lr: float = TrainConfig.lr  # AdamW peak learning rate
    seed: int = TrainConfig.seed  # initialisation and shuffling
    se: bool = ClassifierConfig.se  # squeeze-and-excitation channel weights on the backbone's final feature map
    head: one_of("models.configs:HEADS") = ClassifierConfig.head  # "linear" (pooled features) or "attention" (one spatial map per class; cam_method attention)
    gcn: bool = ClassifierConfig.gcn  # class vectors from a GCN over the train split's label co-occurrence (ML-GCN)
    processes: int = 1  # training processes (torchrun: one per GPU, or CPU processes); batch_size must split over them
    checkpoint: str | None = None  # reuse this checkpoint URI instead of training

    def __post_init__(self) -> None:
        if self.preset is not None and _changed(self, "backbone"):
            raise ValueError("set classifier.preset or classifier.backbone, not both")
        _check_processes("classifier", self.processes, self.batch_size)

    def model_backbone(self) -> str:
        """The backbone the classifier is built with: its preset's, or ``backbone``."""
        return CLASSIFIER_PRESETS[self.preset] if self.preset is not None else self.backbone


@dataclass(frozen=True, config=CHECKED)
class GeneratorSettings:
    normals: tuple[str, ...] = ()  # dataset URIs of normal X-rays (default: the dataset's own normals)
    adult_only: bool = True  # leave out pediatric rows when a dataset records age_group
    preset: one_of("models.dit:PRESETS") | None = None  # tiny | small (DiT-S) | base (DiT-B): sets the four sizes below, the patch for 256 tokens
    patch_size: int = DiTConfig.patch_size  # DiT patch side in pixels (tokens = (size / patch) ** 2)
    depth: int = DiTConfig.depth  # transformer blocks
    num_heads: int = DiTConfig.num_heads  # attention heads
    head_dim: int = DiTConfig.head_dim  # width per head (model width = num_heads x head_dim)
    conditioning: one_of("models.configs:CONDITIONINGS") = DiTConfig.conditioning  # "mask": an inpainting DiT; "labels": DfT-Caption, sampled from finding sets (models/dit.py)
    prediction: one_of("models.configs:PREDICTIONS") = "sample"  # the DiT predicts the clean image ("sample") or the noise ("epsilon"; blocky at patch 8)
    steps: int = DiTTrainConfig.steps  # optimiser steps
    batch_size: int = DiTTrainConfig.batch_size  # normal images per step
    lr: float = DiTTrainConfig.lr  # AdamW learning rate
    warmup_steps: int | None = None  # linear learning-rate warm-up (null: models.configs.DiTTrainConfig's, a tenth of the steps up to 200)
    seed: int = DiTTrainConfig.seed  # initialisation, noise and shuffling
    processes: int = 1  # training processes (torchrun: one per GPU, or CPU processes); batch_size must split over them
    checkpoint: str | None = None  # use this checkpoint URI instead of training (null on real data: weights/ when it has the size)

    def __post_init__(self) -> None:
        if self.preset is not None and _changed(self, "patch_size", "depth", "num_heads", "head_dim"):
            raise ValueError("set generator.preset or the sizes (patch_size, depth, num_heads, head_dim), "
                             "not both")
        _check_processes("generator", self.processes, self.batch_size)

    def sizes(self, image_size: int) -> dict:
        """The DiT's patch_size, depth, num_heads and head_dim at ``image_size`` px."""
        from models.dit import preset_sizes

        if self.preset is not None:
            return preset_sizes(self.preset, image_size)
        return {"patch_size": self.patch_size, "depth": self.depth, "num_heads": self.num_heads,
                "head_dim": self.head_dim}


@dataclass(frozen=True, config=CHECKED)
class KnowledgeSettings:
    judge: one_of("tasks.knowledge:JUDGES") = "rules"  # rules | anthropic | none (no guidance: remove every head finding)
    model: str | None = None  # Anthropic model (default: $TAILFORGE_LLM_MODEL, else tasks/knowledge/llm.py)
    prompt_version: str | None = None  # bump to make new decisions (default: tasks/knowledge/llm.py)
    api_key_secret: str | None = None  # Prefect Secret block name; else ANTHROPIC_API_KEY
    llm_timeout: float = LLMSettings.timeout_s  # seconds per LLM request
    llm_retries: int = LLMSettings.max_retries  # retries on timeouts, connection errors, 408, 429, 529 and 5xx
    llm_budget: float = LLMSettings.budget_s  # seconds per label set, all tries and waits together
    cache: str | None = None  # DuckDB file (default: $TAILFORGE_HOME/decisions.duckdb)

    def cache_path(self) -> str:
        return self.cache or str(tailforge_home() / "decisions.duckdb")

    def make_judge(self):
        """The judge these settings name (tasks.knowledge.make_judge)."""
        from tasks.knowledge import make_judge

        named = {"model": self.model, "prompt_version": self.prompt_version}
        llm = LLMSettings(**{k: v for k, v in named.items() if v}, timeout_s=self.llm_timeout,
                          max_retries=self.llm_retries, budget_s=self.llm_budget, api_key_secret=self.api_key_secret)
        return make_judge(self.judge, llm if self.judge == "anthropic" else None)


@dataclass(frozen=True, config=CHECKED)
class StageSettings:
    pretrain: str | None = None  # a deployment ("pretrain/pretrain") to train on its pool; null: in the factory's process
    augment: str | None = None  # a deployment ("augment/augment") to augment on its pool; null: in the factory's process
    finetune: str | None = None  # a deployment ("finetune/finetune") to fine-tune on its pool; null: in the factory's process
    timeout_s: float = 86400.0  # longest wait for a stage run as a deployment; then it is cancelled and the run fails

    def __post_init__(self) -> None:
        for name in ("pretrain", "augment", "finetune"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or value.count("/") != 1):
                raise ValueError(f"stages.{name} must name a deployment as 'flow/deployment', not {value!r}")
        if self.timeout_s <= 0:
            raise ValueError("stages.timeout_s must be positive")


@dataclass(frozen=True, config=CHECKED)
class FactorySettings:
    name: StrictStr = "factory"  # the run's name: default output, dataset and report names derive from it
    dataset: DatasetSettings = field(default_factory=DatasetSettings)
    classifier: ClassifierSettings = field(default_factory=ClassifierSettings)
    generator: GeneratorSettings = field(default_factory=GeneratorSettings)
    knowledge: KnowledgeSettings = field(default_factory=KnowledgeSettings)
    augment: dict = field(default_factory=dict)  # tasks.augment.AugmentSettings fields
    finetune: dict = field(default_factory=dict)  # tasks.finetune.FinetuneSettings fields
    stages: StageSettings = field(default_factory=StageSettings)  # where pretrain, augment and fine-tune run
    output: str | None = None  # run outputs (default: $TAILFORGE_HOME/runs/<name>)
    models: str | None = None  # checkpoints (default: $TAILFORGE_HOME/models)

    def __post_init__(self) -> None:
        from tasks.store import check_output_location

        if not isinstance(self.name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", self.name):
            raise ValueError(f"name must be a plain name (letters, digits, '.', '_', '-', at most 100; no '/' or "
                             f"'..': default outputs are named after it), got {self.name!r}")
        for what, uri in (("output", self.output), ("models", self.models), ("dataset.uri", self.dataset.uri)):
            if uri is not None:
                if not isinstance(uri, str):
                    raise ValueError(f"{what} must be a folder or s3:// URI, got {uri!r}")
                check_output_location(uri, what)

    def output_uri(self) -> str:
        return self.output or str(tailforge_home() / "runs" / self.name)

    def models_uri(self) -> str:
        return self.models or str(tailforge_home() / "models")

    def dataset_uri(self) -> str:
        return self.dataset.uri or default_dataset_uri(f"{self.name}-{self.dataset.source}")

    def cache_path(self) -> str:
        return self.knowledge.cache_path()

    def to_dict(self) -> dict:
        return asdict(self)

    def effective(self) -> dict:
        """Every setting as it will be used: defaults filled in (augment and finetune too) and
        the default locations resolved (`tailforge config`)."""
        data = {**self.to_dict(), "augment": asdict(augment_settings(self)),
                "finetune": asdict(finetune_settings(self)), "output": self.output_uri(), "models": self.models_uri()}
        data["dataset"]["uri"], data["knowledge"]["cache"] = self.dataset_uri(), self.cache_path()
        return data


def settings_from_dict(data: dict) -> FactorySettings:
    """The factory's settings from a mapping of sections, every section checked now, before any
    work (the augment and fine-tune sections too)."""
    settings = validated(FactorySettings, data)
    augment_settings(settings)
    finetune_settings(settings)
    return settings


def augment_settings(settings: FactorySettings):
    from tasks.augment import AugmentSettings

    return AugmentSettings.from_dict(settings.augment)


def finetune_settings(settings: FactorySettings):
    from tasks.finetune import FinetuneSettings

    return validated(FinetuneSettings, settings.finetune, "finetune")


def settings_or_defaults(path: str | None) -> FactorySettings:
    """The settings of a YAML file, or the built-in defaults when none is named."""
    return load_settings(path) if path else FactorySettings()


MAX_SETTINGS_BYTES = 256 * 1024  # a settings file is a few kB: a larger one is a mistake or an attack
MAX_SETTINGS_VALUES = 10_000  # YAML nodes once aliases are expanded (a 413-byte alias bomb expands to 10^9)


def load_settings(path: str) -> FactorySettings:
    import yaml

    if not os.path.exists(path):
        raise FileNotFoundError(f"no settings file at {path}")
    size = os.path.getsize(path)
    if size > MAX_SETTINGS_BYTES:
        raise ValueError(f"{path} is {size:,} bytes; a settings file is a few kB (at most {MAX_SETTINGS_BYTES:,})")
    with open(path) as fh:
        text = fh.read()
    try:
        _check_expanded_size(yaml.compose(text, Loader=yaml.SafeLoader), path)
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping of sections")
    return settings_from_dict(data)


def _check_expanded_size(root, path: str) -> None:
    """Count the YAML graph's nodes as loading would expand them (an alias counts its whole
    target again), stopping at ``MAX_SETTINGS_VALUES``: refused before anything is built."""
    import yaml

    stack, seen = [root] if root is not None else [], 0
    while stack:
        node = stack.pop()
        seen += 1
        if seen > MAX_SETTINGS_VALUES:
            raise ValueError(f"{path} expands to more than {MAX_SETTINGS_VALUES:,} values (YAML aliases repeated "
                             f"inside each other?): a settings file names a few hundred at most")
        if isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            stack.extend(part for pair in node.value for part in pair)
