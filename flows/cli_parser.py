"""The ``tailforge`` command line's parser: every command, its arguments and their defaults
(read from the settings dataclasses and the registries, so they match the YAML's)."""

from __future__ import annotations

import argparse
from dataclasses import fields

from flows.settings import DatasetSettings, KnowledgeSettings
from tasks.checked import choices_of, names


def _add_common_ingest(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("table", help="the source's label table (CSV)")
    parser.add_argument("images", help="folder (or s3:// URI) the table's image paths are relative to")
    parser.add_argument("--out", help="dataset URI: a folder or s3://bucket/prefix "
                        "(default: $TAILFORGE_HOME/datasets/<source>)")
    parser.add_argument("--split-csv", help="CSV with an image column and 'split' (train/val/test) that overrides splits")
    parser.add_argument("--size", type=int, default=DatasetSettings.size, help="output side in pixels (default %(default)s)")
    parser.add_argument("--tail", help="comma-separated tail classes; default: below the median train frequency")
    parser.add_argument("--shard-rows", type=int, default=DatasetSettings.shard_rows,
                        help="rows per Parquet shard (default %(default)s)")
    parser.add_argument("--workers", type=int, default=DatasetSettings.workers, help="decoding threads (default %(default)s)")
    parser.add_argument("--allow-missing", action="store_true", default=DatasetSettings.allow_missing,
                        help="ingest even when most image paths have no file (default: stop before any work, "
                             "naming the folder and a path it looked for)")
    parser.add_argument("--follow-symlinks", action="store_true", default=DatasetSettings.follow_symlinks,
                        help="read symlinks in the images folder that lead outside it (default: quarantined as "
                             "path_escape; most of a sample so: stop before any work)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def _setting_flag(cls, name: str) -> dict:
    """``add_argument`` keywords for the setting ``name`` of ``cls``: its default, its choices
    and its meaning, read from the settings (flows/settings_reference.py)."""
    from flows.settings_reference import meanings

    default = next(f.default for f in fields(cls) if f.name == name)
    text = meanings(cls)[name].replace("%", "%%") + (" (default %(default)s)" if default is not None else "")
    return {"default": default, "choices": choices_of(cls, name), "help": text}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tailforge", description="Tail-class chest X-ray data factory.")
    commands = parser.add_subparsers(dest="command", required=True)
    _ingest_commands(commands)
    _dataset_commands(commands)
    _factory_commands(commands)
    return parser


def _ingest_commands(commands) -> None:
    """ingest (one subcommand per real source) and phantom: datasets in."""
    from tasks.sources import READERS

    ingest = commands.add_parser("ingest", help="ingest a real dataset into Parquet shards")
    kinds = ingest.add_subparsers(dest="kind", required=True)
    for name, source in READERS.items():
        sub = kinds.add_parser(name, help=source.table)
        _add_common_ingest(sub)
        for option in source.options:
            sub.add_argument(f"--{option.replace('_', '-')}", **_setting_flag(DatasetSettings, option))

    phantom = commands.add_parser("phantom", help="write the built-in synthetic chest phantom as a dataset")
    phantom.add_argument("--n", type=int, default=DatasetSettings.n, help="images (default %(default)s)")
    phantom.add_argument("--size", type=int, default=DatasetSettings.size, help="side in pixels (default %(default)s)")
    phantom.add_argument("--seed", type=int, default=DatasetSettings.seed)
    phantom.add_argument("--vocab", choices=names("tasks.labels:VOCAB_ALIASES"), default=DatasetSettings.vocab)
    phantom.add_argument("--out", help="dataset URI (default: $TAILFORGE_HOME/datasets/phantom)")
    phantom.add_argument("--tail", help="comma-separated tail classes; default: below the median train frequency")
    phantom.add_argument("--shard-rows", type=int, default=DatasetSettings.shard_rows)
    phantom.add_argument("--json", action="store_true")


def _dataset_commands(commands) -> None:
    """info, verify, plan, decisions, lineage, query, runs: what a dataset and the catalog hold."""
    info = commands.add_parser("info", help="rows, splits, per-class counts, head/tail and quarantine of a dataset")
    info.add_argument("uri")
    info.add_argument("--reasons", action="store_true", help="list the quarantine rows: reason, table line, path")
    info.add_argument("--limit", type=int, default=50, help="with --reasons: at most this many rows (default 50)")
    info.add_argument("--json", action="store_true")

    verify = commands.add_parser("verify", help="read every shard of a dataset and check it against the digest in "
                                 "its name (every command checks the shards it reads; this checks them all)")
    verify.add_argument("uri")
    verify.add_argument("--json", action="store_true")

    plan = commands.add_parser("plan", help="head/tail split, label sets, LKG decisions and candidate images")
    plan.add_argument("uri", help="dataset URI")
    plan.add_argument("--judge", choices=names("tasks.knowledge:JUDGES"), default=KnowledgeSettings.judge,
                      help="rules: the offline clinical table (default); anthropic: the Messages API, "
                           "rules as fallback; none: no guidance, remove every head finding")
    plan.add_argument("--model", default=None, help="Anthropic model name (default: $TAILFORGE_LLM_MODEL "
                      "or claude-sonnet-5-5)")
    plan.add_argument("--prompt-version", default=None, help="bump to make new decisions (default lkg-v1)")
    plan.add_argument("--api-key-secret", help="Prefect Secret block holding the key (default: $ANTHROPIC_API_KEY)")
    plan.add_argument("--llm-timeout", type=float, default=KnowledgeSettings.llm_timeout,
                      help="seconds per LLM request (default %(default)s)")
    plan.add_argument("--llm-retries", type=int, default=KnowledgeSettings.llm_retries,
                      help="retries on timeouts, connection errors, 408, 429, 529 and 5xx (default %(default)s)")
    plan.add_argument("--llm-budget", type=float, default=KnowledgeSettings.llm_budget,
                      help="seconds per label set, all tries and waits together (default %(default)s)")
    plan.add_argument("--cache", help="decision cache (default: $TAILFORGE_HOME/decisions.duckdb)")
    plan.add_argument("--export", help="write the decisions this plan used as Parquet under this folder URI")
    plan.add_argument("--json", action="store_true")

    decisions = commands.add_parser("decisions", help="list the cached LKG decisions")
    decisions.add_argument("--cache", help="decision cache (default: $TAILFORGE_HOME/decisions.duckdb)")
    decisions.add_argument("--export", help="write all decisions as Parquet under this folder URI")
    decisions.add_argument("--json", action="store_true")

    lineage = commands.add_parser("lineage", help="where a sample came from: its chain back to the real image")
    lineage.add_argument("sample_id", help="a sample id (at least 8 leading characters)")
    lineage.add_argument("--root", help="catalog root: everything under it is searched (default: $TAILFORGE_HOME)")
    lineage.add_argument("--json", action="store_true")

    query = commands.add_parser("query", help="read-only SQL over the catalog views: "
                                "samples, quarantine, decisions, runs, checkpoints")
    query.add_argument("sql")
    query.add_argument("--root", help="catalog root (default: $TAILFORGE_HOME)")
    output = query.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true")
    output.add_argument("--csv", action="store_true")
    query.add_argument("--limit", type=int, default=10_000, help="rows at most (default 10000)")
    query.add_argument("--timeout", type=float, default=30.0,
                       help="seconds the query may run before it is stopped (default 30; 0: no limit)")

    runs = commands.add_parser("runs", help="recent runs under a root (ingest, pretrain, augment, fine-tune, "
                                            "factory): status, duration, counts")
    runs.add_argument("--root", help="catalog root (default: $TAILFORGE_HOME)")
    runs.add_argument("--limit", type=int, default=20)
    runs.add_argument("--json", action="store_true")


def _factory_commands(commands) -> None:
    """pretrain, augment, finetune (the factory's steps one at a time), run, config, demo."""
    # the factory's steps one at a time, for a dataset made with `ingest` or `phantom`
    pretrain = _step(commands, "pretrain", "train the classifier and the normal DiT (or reuse the YAML's "
                     "checkpoints)", "classifier and generator sections are")
    pretrain.add_argument("--models", help="checkpoint folder URI (default: the YAML's models)")
    augment = _step(commands, "augment", "generate tail-class images with trained checkpoints (re-runs add "
                    "only what is missing)", "knowledge and augment sections are")
    augment.add_argument("--classifier", required=True, help="classifier checkpoint URI")
    augment.add_argument("--generator", required=True, help="normal-X-ray DiT checkpoint URI")
    augment.add_argument("--out", help="output URI (default: <the YAML's output>/augmented)")
    finetune = _step(commands, "finetune", "fine-tune with and without PIL from the pretrained classifier and "
                     "write the report", "finetune section is")
    finetune.add_argument("--classifier", required=True, help="the pretrained classifier's checkpoint URI")
    finetune.add_argument("--augmented", help="augment output URI (none: the baseline only)")
    finetune.add_argument("--out", help="report folder URI (default: <the YAML's output>/report)")

    run = commands.add_parser("run", help="run the whole factory from one YAML file (see flows/demo.yaml)")
    run.add_argument("config", help="settings YAML")
    run.add_argument("--local-server", action="store_true",
                     help="start/reuse the local Prefect server under $TAILFORGE_HOME when PREFECT_API_URL is unset")
    run.add_argument("--json", action="store_true")

    config = commands.add_parser("config", help="print the effective settings of a YAML: every default filled in")
    config.add_argument("config", nargs="?", help="settings YAML (default: the built-in defaults)")
    config.add_argument("--json", action="store_true")
    config.add_argument("--reference", action="store_true",
                        help="print every setting with its default, meaning and defining class (markdown)")
    config.add_argument("--schema", action="store_true",
                        help="print the settings file's JSON Schema (for editors; docs/settings.schema.json)")

    demo = commands.add_parser("demo", help="start a local Prefect server and run the factory on the phantom")
    demo.add_argument("--n", type=int, default=None, help="phantom images (default: flows/demo.yaml)")
    demo.add_argument("--stop", action="store_true", help="stop the demo's Prefect server")


def _step(commands, name: str, text: str, sections: str) -> argparse.ArgumentParser:
    """A factory step as a command: a dataset, the YAML whose sections it reads, a server."""
    step = commands.add_parser(name, help=text)
    step.add_argument("uri", help="dataset URI (from `tailforge ingest` or `tailforge phantom`)")
    step.add_argument("--config", help=f"settings YAML: its {sections} used (default: the built-in "
                      f"defaults; `tailforge config` shows them)")
    step.add_argument("--local-server", action="store_true",
                      help="start/reuse the local Prefect server under $TAILFORGE_HOME when PREFECT_API_URL is unset")
    step.add_argument("--json", action="store_true")
    return step
