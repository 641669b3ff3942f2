"""Settings: where local state lives, and one YAML file -> frozen dataclasses for the factory.

All local state — the demo's Prefect home, the decision cache, default outputs — lives under
one folder, ``$TAILFORGE_HOME`` (default ``./.tailforge``), so a user can move or wipe it and
tests can isolate it. Unknown keys in the YAML are errors that name the key and the section.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

HOME_VARIABLE = "TAILFORGE_HOME"
DEFAULT_HOME = ".tailforge"


def tailforge_home() -> Path:
    """The state folder, made absolute (not created)."""
    return Path(os.environ.get(HOME_VARIABLE) or DEFAULT_HOME).expanduser().resolve()


def default_dataset_uri(name: str) -> str:
    """Where a dataset goes when the user names no ``--out``."""
    return str(tailforge_home() / "datasets" / name)


@dataclass(frozen=True)
class DatasetSettings:
    source: str = "phantom"  # phantom | nih | chexpert | mimic | folder | existing (uri only)
    uri: str | None = None  # the dataset URI (default: $TAILFORGE_HOME/datasets/<name>)
    table: str | None = None  # the source's label table (real sources)
    images: str | None = None  # the folder the table's paths are relative to
    split_csv: str | None = None
    size: int = 64  # image side in pixels
    n: int = 600  # phantom images
    seed: int = 0  # phantom seed
    vocab: str = "nih"  # phantom / folder vocabulary
    tail: tuple[str, ...] | None = None  # explicit tail classes


@dataclass(frozen=True)
class ClassifierSettings:
    backbone: str = "resnet18"  # timm name or a paper alias (resnet50, efficientnet_b0, ...)
    epochs: int = 8
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = 0
    checkpoint: str | None = None  # reuse this checkpoint URI instead of training


@dataclass(frozen=True)
class GeneratorSettings:
    normals: tuple[str, ...] = ()  # dataset URIs of normal X-rays (default: the dataset's own normals)
    adult_only: bool = True  # leave out pediatric rows when a dataset records age_group
    patch_size: int = 4
    depth: int = 6
    num_heads: int = 4
    head_dim: int = 32
    steps: int = 2000
    batch_size: int = 32
    lr: float = 3e-4
    seed: int = 0
    checkpoint: str | None = None  # reuse this checkpoint URI instead of training


@dataclass(frozen=True)
class KnowledgeSettings:
    judge: str = "rules"  # rules | anthropic | none (no guidance: remove every head finding)
    model: str | None = None  # Anthropic model (default: tasks/knowledge/llm.py)
    prompt_version: str | None = None
    api_key_secret: str | None = None  # Prefect Secret block name; else ANTHROPIC_API_KEY
    llm_timeout: float = 30.0
    llm_retries: int = 2
    cache: str | None = None  # DuckDB file (default: $TAILFORGE_HOME/decisions.duckdb)


@dataclass(frozen=True)
class FactorySettings:
    name: str = "factory"
    dataset: DatasetSettings = field(default_factory=DatasetSettings)
    classifier: ClassifierSettings = field(default_factory=ClassifierSettings)
    generator: GeneratorSettings = field(default_factory=GeneratorSettings)
    knowledge: KnowledgeSettings = field(default_factory=KnowledgeSettings)
    augment: dict = field(default_factory=dict)  # tasks.augment.AugmentSettings fields
    finetune: dict = field(default_factory=dict)  # tasks.finetune.FinetuneSettings fields
    output: str | None = None  # run outputs (default: $TAILFORGE_HOME/runs/<name>)
    models: str | None = None  # checkpoints (default: $TAILFORGE_HOME/models)

    def output_uri(self) -> str:
        return self.output or str(tailforge_home() / "runs" / self.name)

    def models_uri(self) -> str:
        return self.models or str(tailforge_home() / "models")

    def dataset_uri(self) -> str:
        return self.dataset.uri or default_dataset_uri(f"{self.name}-{self.dataset.source}")

    def cache_path(self) -> str:
        return self.knowledge.cache or str(tailforge_home() / "decisions.duckdb")

    def to_dict(self) -> dict:
        return asdict(self)


_SECTIONS = {"dataset": DatasetSettings, "classifier": ClassifierSettings, "generator": GeneratorSettings,
             "knowledge": KnowledgeSettings}


def _build(cls, data: dict, where: str):
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown} in {where}; known: {sorted(known)}")
    values: dict[str, Any] = {}
    for key, value in data.items():
        values[key] = tuple(value) if isinstance(value, list) else value
    return cls(**values)


def settings_from_dict(data: dict) -> FactorySettings:
    data = dict(data or {})
    top = {f.name for f in fields(FactorySettings)}
    unknown = sorted(set(data) - top)
    if unknown:
        raise ValueError(f"unknown section(s) {unknown}; known: {sorted(top)}")
    for section, cls in _SECTIONS.items():
        if section in data:
            data[section] = _build(cls, data[section] or {}, f"section '{section}'")
    settings = FactorySettings(**data)
    from tasks.augment import AugmentSettings

    try:  # validate now, before any work
        AugmentSettings.from_dict(settings.augment)
        finetune_settings(settings)
    except TypeError as exc:
        raise ValueError(f"bad augment or finetune setting: {exc}") from exc
    return settings


def finetune_settings(settings: FactorySettings):
    from tasks.finetune import FinetuneSettings

    return FinetuneSettings(**{k: tuple(v) if isinstance(v, list) else v for k, v in settings.finetune.items()})


def load_settings(path: str) -> FactorySettings:
    import yaml

    if not os.path.exists(path):
        raise FileNotFoundError(f"no settings file at {path}")
    with open(path) as fh:
        try:
            data = yaml.safe_load(fh) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping of sections")
    return settings_from_dict(data)
