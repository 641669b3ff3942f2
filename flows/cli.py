"""The ``tailforge`` command.

    tailforge ingest nih|chexpert|mimic|folder TABLE IMAGES_DIR [--out URI] [--split-csv CSV] [--size N]
    tailforge phantom [--n N] [--size S] [--seed K] [--vocab nih|chexpert] [--out URI]
    tailforge info URI [--json]
    tailforge plan DATASET_URI [--judge rules|anthropic|none] [--json] [--export URI]
    tailforge decisions [--json] [--export URI]
    tailforge lineage SAMPLE_ID [--root URI] [--json]
    tailforge query "SQL" [--root URI] [--json|--csv] [--timeout S]
    tailforge runs [--root URI]
    tailforge pretrain DATASET_URI [--config YAML] [--models URI]
    tailforge augment DATASET_URI --classifier URI --generator URI [--config YAML] [--out URI]
    tailforge finetune DATASET_URI --classifier URI [--augmented URI] [--config YAML] [--out URI]
    tailforge run CONFIG.yaml [--local-server]
    tailforge config [CONFIG.yaml] [--json]
    tailforge demo [--stop]

Errors that a user can fix (a missing column, a missing file, an incompatible dataset, a
dataset another writer holds, an unreachable storage endpoint) print one line saying what to
do and exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import contextmanager
from typing import Iterator

from flows.settings import JUDGES, DatasetSettings, KnowledgeSettings, default_dataset_uri, tailforge_home

USER_ERRORS = (ValueError, FileNotFoundError, PermissionError, RuntimeError, LookupError)
EPHEMERAL_START_S = 120
EPHEMERAL_TIMEOUT = "Timed out while attempting to connect to ephemeral Prefect API server"


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
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tailforge", description="Tail-class chest X-ray data factory.")
    commands = parser.add_subparsers(dest="command", required=True)

    ingest = commands.add_parser("ingest", help="ingest a real dataset into Parquet shards")
    kinds = ingest.add_subparsers(dest="kind", required=True)
    nih = kinds.add_parser("nih", help="NIH ChestX-ray14: Data_Entry_2017*.csv (+ BBox_List_2017.csv beside it)")
    _add_common_ingest(nih)
    nih.add_argument("--bbox-table", help="NIH BBox_List_2017.csv (default: found beside TABLE)")
    for name, text in (("chexpert", "CheXpert train.csv/valid.csv (IMAGES: the folder holding CheXpert-v1.0*/)"),
                       ("mimic", "MIMIC-CXR-JPG *-chexpert.csv (IMAGES: the folder holding files/)")):
        sub = kinds.add_parser(name, help=text)
        _add_common_ingest(sub)
        sub.add_argument("--views", choices=["frontal", "lateral", "all"], default=DatasetSettings.views)
        sub.add_argument("--uncertain", choices=["ignore", "ones", "zeros"], default=DatasetSettings.uncertain,
                         help="uncertain (-1) labels become NaN (ignore), 1 or 0")
        sub.add_argument("--blank", choices=["ignore", "zeros"], default=DatasetSettings.blank,
                         help="blank labels become NaN (ignore) or 0")
        if name == "mimic":
            sub.add_argument("--split-table", help="*-split.csv (default: found beside TABLE)")
            sub.add_argument("--metadata-table", help="*-metadata.csv (default: found beside TABLE)")
    folder = kinds.add_parser("folder", help="a folder of images and a CSV: path column + '|'-separated labels")
    _add_common_ingest(folder)
    folder.add_argument("--vocab", choices=["nih", "chexpert"], default=DatasetSettings.vocab)
    folder.add_argument("--path-column", default=DatasetSettings.path_column,
                        help="the column of image paths, relative to IMAGES (default: %(default)r, NIH's name)")
    folder.add_argument("--label-column", default=DatasetSettings.label_column,
                        help="the column of '|'-separated labels, 'No Finding' for normals (default: %(default)r)")
    folder.add_argument("--patient-column", help="the patient id column (default: none; splits by path)")
    folder.add_argument("--split-column", help="a train/val/test column (default: split 70/10/20 by patient)")

    phantom = commands.add_parser("phantom", help="write the built-in synthetic chest phantom as a dataset")
    phantom.add_argument("--n", type=int, default=DatasetSettings.n, help="images (default %(default)s)")
    phantom.add_argument("--size", type=int, default=DatasetSettings.size, help="side in pixels (default %(default)s)")
    phantom.add_argument("--seed", type=int, default=DatasetSettings.seed)
    phantom.add_argument("--vocab", choices=["nih", "chexpert"], default=DatasetSettings.vocab)
    phantom.add_argument("--out", help="dataset URI (default: $TAILFORGE_HOME/datasets/phantom)")
    phantom.add_argument("--tail", help="comma-separated tail classes; default: below the median train frequency")
    phantom.add_argument("--shard-rows", type=int, default=DatasetSettings.shard_rows)
    phantom.add_argument("--json", action="store_true")

    info = commands.add_parser("info", help="rows, splits, per-class counts, head/tail and quarantine of a dataset")
    info.add_argument("uri")
    info.add_argument("--reasons", action="store_true", help="list the quarantine rows: reason, table line, path")
    info.add_argument("--limit", type=int, default=50, help="with --reasons: at most this many rows (default 50)")
    info.add_argument("--json", action="store_true")

    plan = commands.add_parser("plan", help="head/tail split, label sets, LKG decisions and candidate images")
    plan.add_argument("uri", help="dataset URI")
    plan.add_argument("--judge", choices=list(JUDGES), default=KnowledgeSettings.judge,
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

    demo = commands.add_parser("demo", help="start a local Prefect server and run the factory on the phantom")
    demo.add_argument("--n", type=int, default=None, help="phantom images (default: flows/demo.yaml)")
    demo.add_argument("--stop", action="store_true", help="stop the demo's Prefect server")
    return parser


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


@contextmanager
def _progress(label: str, enabled: bool) -> Iterator:
    """A rich progress bar on a terminal; silent when printing JSON or not on a terminal."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress(label, BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True) as bar:
        task = bar.add_task(label, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def _tail(text: str | None) -> tuple[str, ...] | None:
    return tuple(t.strip() for t in text.split(",") if t.strip()) if text else None


def cmd_ingest(args: argparse.Namespace) -> int:
    from flows.settings import READER_OPTIONS

    given = {name: getattr(args, name) for name in READER_OPTIONS if hasattr(args, name)}  # this kind's options
    settings = DatasetSettings(source=args.kind, table=args.table, images=args.images, split_csv=args.split_csv,
                               size=args.size, tail=_tail(args.tail), shard_rows=args.shard_rows,
                               workers=args.workers, allow_missing=args.allow_missing, **given)
    out = args.out or default_dataset_uri(args.kind)
    with _progress(f"ingest {args.kind}", not args.json) as progress:
        report = settings.ingest(out, progress)
    return _print_report(report, args.json)


def cmd_phantom(args: argparse.Namespace) -> int:
    from tasks.ingest import ingest_phantom

    out = args.out or default_dataset_uri("phantom")
    with _progress("phantom", not args.json) as progress:
        report = ingest_phantom(out, args.n, args.size, args.seed, args.vocab, args.shard_rows,
                                _tail(args.tail), progress)
    return _print_report(report, args.json)


def _print_report(report, as_json: bool) -> int:
    if as_json:
        print(json.dumps(report.to_json(), indent=2))
        return 0
    bad = sum(report.quarantined.values())
    print(f"{report.dataset_uri}: {report.rows_written} rows written in {report.shards_written} shard(s), "
          f"{report.already_present} already present, {bad} quarantined ({report.seconds:.1f} s)")
    for code, n in sorted(report.quarantined.items(), key=lambda kv: -kv[1]):
        print(f"  quarantined {code}: {n}")
    for reason, n in report.filtered.items():
        print(f"  left out ({reason}): {n}")
    if report.retired:
        print(f"  {report.retired} earlier quarantine row(s) retired: their images are in the dataset now")
    if bad:
        print(f"  see each row's reason: tailforge info {report.dataset_uri} --reasons")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from tasks.dataset import quarantine_rows, summarize

    if args.reasons:
        rows = quarantine_rows(args.uri, args.limit)
        if args.json:
            print(json.dumps(rows, indent=2, default=str))
        else:
            print_quarantine(rows)
        return 0
    summary = summarize(args.uri)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print_summary(summary)
    return 0


def print_quarantine(rows: list[dict]) -> None:
    """The quarantine rows: what was not ingested, where it was in the table, and why."""
    from rich.table import Table

    table = Table("reason", "stage", "table line", "path", "why")
    for r in rows:
        ingest_row = r["stage"] == "ingest" and r["row"] is not None
        line = str(r["row"] + 2) if ingest_row else "-"  # a 0-based data row, after the header line
        table.add_row(r["reason_code"], r["stage"] or "-", line, r["source_uri"] or "-", r["reason"] or "")
    _console().print(table if rows else "no quarantine rows")


def print_summary(summary: dict) -> None:
    from rich.table import Table

    console = _console()
    console.print(f"[bold]{summary['name']}[/] at {summary['uri']}: {summary['rows']} images "
                  f"({summary['vocabulary']}, {summary['image_size']} px), "
                  f"splits {summary['splits']}, {summary['quarantined']} quarantined")
    splits = [s for s in ("train", "val", "test") if s in summary["splits"]]
    table = Table("class", "group", *splits, "all")
    group = {**{name: "head" for name in summary["head"]}, **{name: "tail" for name in summary["tail"]}}
    for name, counts in summary["classes"].items():
        table.add_row(name, group.get(name, "-"), *[str(counts.get(s, 0)) for s in splits],
                      str(counts["all"]))
    table.add_row("(normal)", "", *[str(summary["normal"].get(s, 0)) for s in splits], str(summary["normal"]["all"]))
    console.print(table)
    console.print(f"head/tail rule: {summary['head_tail_rule']}")
    for code, n in summary["quarantine_reasons"].items():
        console.print(f"quarantined {code}: {n}")
    duplicates = summary.get("duplicate_ids") or {}
    if duplicates:
        console.print(f"[bold red]{len(duplicates)} sample ids are held more than once[/] "
                      f"({sum(duplicates.values()) - len(duplicates)} extra rows; e.g. {next(iter(duplicates))[:16]}): "
                      f"two writers ran at once. Re-ingest into a fresh --out to repair.")


def cmd_plan(args: argparse.Namespace) -> int:
    from tasks.knowledge import export_decisions, plan

    knowledge = KnowledgeSettings(judge=args.judge, model=args.model, prompt_version=args.prompt_version,
                                  api_key_secret=args.api_key_secret, llm_timeout=args.llm_timeout,
                                  llm_retries=args.llm_retries, llm_budget=args.llm_budget, cache=args.cache)
    report, used = plan(args.uri, knowledge.cache_path(), knowledge.make_judge())
    exported = export_decisions(used, args.export) if args.export else None
    if args.json:
        print(json.dumps({**report.to_json(), "exported": exported}, indent=2, default=str))
        return 0
    print_plan(report)
    if exported:
        print(f"decisions written to {exported}")
    return 0


def print_plan(report) -> None:
    from rich.table import Table

    console = _console()
    console.print(f"[bold]plan[/] for {report.dataset_uri} ({report.vocabulary}), judge {report.judge} "
                  f"({report.model}, prompt {report.prompt_version})")
    console.print(f"head: {', '.join(report.head)}\ntail: {', '.join(report.tail)}  [{report.head_tail_rule}]")
    console.print(f"{report.train_images} train images, {report.candidate_images} hold a head and a tail finding, "
                  f"in {len(report.label_sets)} distinct label sets; {report.images_to_generate} would be inpainted")
    console.print(f"decisions: {report.cache_hits} cached, {report.cache_misses} new, {report.llm_calls} LLM calls"
                  + (f", fallbacks {report.fallbacks}" if report.fallbacks else "") + f" ({report.seconds:.2f} s)")
    table = Table("tail class", "new samples")
    for name, n in report.new_samples_per_tail.items():
        table.add_row(name, str(n))
    console.print(table)
    sets = Table("images", "head present", "tail present", "keep", "remove", "source")
    for s in report.label_sets[:10]:
        sets.add_row(str(s.images), ", ".join(s.head), ", ".join(s.tail), ", ".join(s.keep) or "-",
                     ", ".join(s.remove) or "-", s.source)
    console.print(sets)


def cmd_decisions(args: argparse.Namespace) -> int:
    from tasks.knowledge import DecisionCache, export_decisions

    with DecisionCache(KnowledgeSettings(cache=args.cache).cache_path(), read_only=True) as cache:
        decisions = cache.all()
    if args.export:
        print(f"{len(decisions)} decisions written to {export_decisions(decisions, args.export)}")
    if args.json:
        print(json.dumps([d.to_row() for d in decisions], indent=2, default=str))
    elif not args.export:
        for d in decisions:
            print(f"{d.decision_id[:12]} {d.source:8s} {d.judge}/{d.model}/{d.prompt_version} "
                  f"head={','.join(d.head)} tail={','.join(d.tail)} keep={','.join(d.keep) or '-'} "
                  f"remove={','.join(d.remove) or '-'}" + (f" error={d.error}" if d.error else ""))
    return 0


def _catalog(args: argparse.Namespace):
    from tasks.catalog import TIMEOUT_S, open_catalog

    return open_catalog(args.root or str(tailforge_home()), timeout_s=getattr(args, "timeout", TIMEOUT_S))


def cmd_lineage(args: argparse.Namespace) -> int:
    from tasks.lineage import lineage

    with _catalog(args) as catalog:
        result = lineage(catalog, args.sample_id)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return 0
    print_lineage(result)
    return 0


def print_lineage(result: dict) -> None:
    from tasks.dataset import GENERATED_ORIGINS

    summary = result["summary"]
    source = f"its real source {summary['source']}" if summary["source"] else "a real source not under this root"
    if summary["origin"] == "conditional":
        source = "no real source: sampled from its finding set by the label-conditioned generator"
    print(f"{summary['sample_id']} ({summary['origin']}), {summary['depth']} step(s) from {source}")
    if "labels_before" in summary:
        print(f"labels: {', '.join(summary['labels_before']) or 'none'} -> {', '.join(summary['labels_after']) or 'none'}")
    for step in result["chain"]:
        if step.get("missing"):
            print(f"- {step['sample_id'][:16]}: {step['missing']}")
            continue
        print(f"- {step['sample_id'][:16]} {step.get('origin', '?')} in {step.get('dataset')} (run {step.get('run_id')})")
        for copy in step.get("also_in") or []:
            print(f"    the same sample is also in {copy['dataset']} (run {copy['run_id']}, {copy['created_at'][:19]})")
        if step.get("origin") in GENERATED_ORIGINS:
            d = step.get("decision") or {}
            print(f"    removed {step['removed_labels']}, kept {step['kept_labels']}; decision {d.get('source')} "
                  f"({d.get('judge')}/{d.get('model')}): {d.get('rationale')}")
            print(f"    mask {step['mask'] or 'none (the whole image sampled)'}, seed {step['seed']}, "
                  f"quality {step['quality']:.2f}, "
                  f"accepted {step['accepted']} ({step.get('verdict') or 'no removal check recorded'})")
            print(f"    classifier {step['classifier'].get('id', '')[:16]}, generator {step['generator'].get('id', '')[:16]}")
        elif step.get("source_path"):
            print(f"    source {step['source_path']}")
        if step.get("run_link"):
            print(f"    {step['run_link']}")


def cmd_query(args: argparse.Namespace) -> int:
    import csv

    from tasks.catalog import query

    with _catalog(args) as catalog:
        columns, rows = query(catalog, args.sql, args.limit)
    if args.json:
        print(json.dumps([dict(zip(columns, r)) for r in rows], indent=2, default=str))
    elif args.csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(columns)
        writer.writerows(rows)
    else:
        from rich.table import Table

        table = Table(*columns)
        for r in rows:
            table.add_row(*["" if v is None else str(v) for v in r])
        _console().print(table)
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from tasks.catalog import query
    from tasks.lineage import drop_nulls

    with _catalog(args) as catalog:
        columns, rows = query(catalog, "SELECT run_id, flow, status, started_at, ended_at, counts "
                                       f"FROM runs ORDER BY started_at DESC LIMIT {int(args.limit)}")
    records = [dict(zip(columns, r)) for r in rows]
    for r in records:  # counts as the run wrote them (JSON text in the view), unset ones left out
        r["counts"] = drop_nulls(json.loads(r["counts"])) if r["counts"] else {}
    if args.json:
        print(json.dumps(records, indent=2, default=str))
    else:
        print_runs(records)
    return 0


RUN_COUNTS = ("rows_written", "written", "accepted", "generated", "candidates", "settings")  # the ones worth a column


def print_runs(records: list[dict]) -> None:
    """One row per run: id, flow, status, start, duration, its key counts (or its error)."""
    from rich.table import Table

    table = Table("run", "flow", "status", "started (UTC)", "duration", "counts")
    for r in records:
        counts = r.get("counts") or {}
        shown = counts.get("error") or ", ".join(f"{k} {counts[k]}" for k in RUN_COUNTS if counts.get(k) is not None)
        table.add_row(str(r["run_id"]), r["flow"], r["status"], _when(r["started_at"]),
                      _duration(r["started_at"], r.get("ended_at")), shown or "-")
    _console().print(table if records else "no runs recorded under this root yet")


def _when(value) -> str:
    return str(value)[:19].replace("T", " ") if value else "-"


def _duration(started, ended) -> str:
    from datetime import datetime

    if not started or not ended:
        return "-"
    seconds = (datetime.fromisoformat(str(ended)) - datetime.fromisoformat(str(started))).total_seconds()
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _use_prefect_server(start_local: bool) -> str:
    """PREFECT_API_URL when set; else the demo's local server (started if needed)."""
    from flows import server

    url = os.environ.get("PREFECT_API_URL")
    if not url:
        if not start_local:
            # Prefect's temporary server waits 20 s by default, too little on a busy machine
            os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", str(EPHEMERAL_START_S))
            return ""
        running = server.running_url()
        if running:
            print(f"using the local Prefect server at {running}", flush=True)
        else:
            print(f"starting a local Prefect server (state in {server.prefect_home()}) ...", flush=True)
        url = running or server.start()
        os.environ["PREFECT_API_URL"] = url
        os.environ.setdefault("PREFECT_HOME", str(server.prefect_home()))
    return url


def cmd_run(args: argparse.Namespace) -> int:
    from flows.settings import load_settings

    load_settings(args.config)  # fail on a bad file before any server or flow starts
    url = _use_prefect_server(start_local=args.local_server)
    from flows.factory import factory_flow

    result = factory_flow(config_path=args.config)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print_run(result, url)
    return 0


def _step_settings(args: argparse.Namespace):
    """The YAML's settings (or the defaults); fails on a missing dataset before any server starts."""
    from flows.settings import settings_or_defaults
    from tasks.dataset import read_manifest

    settings = settings_or_defaults(args.config)
    read_manifest(args.uri)
    return settings


def _print_result(result: dict, as_json: bool, printer) -> int:
    if as_json:
        print(json.dumps(result, indent=2, default=str))
    else:
        printer(result)
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    settings = _step_settings(args)
    _use_prefect_server(start_local=args.local_server)
    from flows.pretrain import pretrain_flow

    result = pretrain_flow(args.uri, args.models or settings.models_uri(), settings.classifier, settings.generator)
    return _print_result(result, args.json, lambda r: print(
        f"classifier: {r['classifier']['uri']}\ngenerator:  {r['generator']['uri']}\n"
        f"next: tailforge augment {args.uri} --classifier {r['classifier']['uri']} --generator {r['generator']['uri']}"))


def cmd_augment(args: argparse.Namespace) -> int:
    from flows.pretrain import reuse
    from tasks import store

    settings = _step_settings(args)
    classifier, generator = reuse("classifier", args.classifier), reuse("dit", args.generator)
    out = args.out or store.join(settings.output_uri(), "augmented")
    _use_prefect_server(start_local=args.local_server)
    from flows.augment import augment_flow

    result = augment_flow(args.uri, out, classifier, generator, settings.knowledge, settings.augment,
                          settings.cache_path())
    return _print_result(result, args.json, print_augment)


def cmd_finetune(args: argparse.Namespace) -> int:
    from flows.pretrain import reuse
    from flows.settings import finetune_settings
    from tasks import store

    settings = _step_settings(args)
    reuse("classifier", args.classifier)  # fails clearly when absent
    out = args.out or store.join(settings.output_uri(), "report")
    _use_prefect_server(start_local=args.local_server)
    from flows.finetune import finetune_and_report_flow

    result = finetune_and_report_flow(args.uri, args.augmented, args.classifier, out, finetune_settings(settings))
    return _print_result(result, args.json, lambda r: [print(f"{k + ':':11s} {v}") for k, v in r["report"].items()])


def cmd_config(args: argparse.Namespace) -> int:
    from flows.settings import settings_or_defaults

    if args.reference:
        from flows.settings_reference import markdown

        print(markdown(), end="")
        return 0
    effective = settings_or_defaults(args.config).effective()
    if args.json:
        print(json.dumps(effective, indent=2))
    else:
        import yaml

        print(yaml.safe_dump(json.loads(json.dumps(effective)), sort_keys=False), end="")  # tuples as lists
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Start (or reuse) a local Prefect server, run the factory on the phantom, leave it up."""
    import time
    from importlib import resources

    from flows import server

    if args.stop:
        print("stopped the demo's Prefect server" if server.stop() else "no demo server was running")
        return 0
    print(f"tailforge demo: all state in {tailforge_home()}")
    started = time.perf_counter()
    url = _use_prefect_server(start_local=True)
    server.ensure_gpu_limit(1)
    from flows.factory import factory_flow

    config = str(resources.files("flows").joinpath("demo.yaml"))
    result = factory_flow(config_path=config, overrides={"dataset": {"n": args.n}} if args.n else None)
    print_run(result, url)
    print(f"\ndemo wall time: {time.perf_counter() - started:.0f} s")
    print("the Prefect server keeps running for you; stop it with: tailforge demo --stop")
    return 0


def print_augment(augment: dict, console=None) -> None:
    """What augment wrote, accepted and quarantined, per removed class."""
    console = console or _console()
    output = augment["output"]
    console.print(f"generated:  {augment['out_uri']}  ({output['rows']} rows, {output['accepted']} accepted; this run "
                  f"wrote {augment['written']} ({augment['accepted']} accepted) and quarantined "
                  f"{augment['quarantined'] or 0}; {augment['plan']['llm_calls']} LLM calls; "
                  f"{augment['batches_run']} of {augment['batches']} batches run)")
    for name, (written, accepted) in augment.get("by_class", {}).items():
        console.print(f"  removal verified for {name}: {accepted}/{written}")
    if augment.get("rejected"):
        console.print(f"  not accepted: {augment['rejected']}")


def print_run(result: dict, api_url: str) -> None:
    from rich.table import Table

    console = _console()
    augment = result["augment"]
    console.print(f"\n[bold]factory run finished[/] in {result['seconds']} s")
    console.print(f"dataset:    {result['dataset_uri']}")
    print_augment(augment, console)
    for name, uri in result["report"].items():
        console.print(f"{name + ':':11s} {uri}")
    if api_url:
        console.print(f"Prefect UI: {api_url.removesuffix('/api')}  (flow runs, task runs, artifacts)")
    results = result["finetune"]["results"]
    if results:
        classes = list(next(iter(results.values()))["metrics"]["classes"])
        tail = set(augment["plan"]["tail"])
        table = Table("class", "group", *[f"F1 {s}" for s in results],
                      title="per-class F1 on test (val-tuned thresholds)")
        for c in classes:
            cells = []
            for s in results:
                value = results[s]["metrics"]["classes"][c].get("f1_tuned")
                cells.append("-" if value is None else f"{value:.3f}")
            table.add_row(c, "tail" if c in tail else "head", *cells)
        console.print(table)
    print_example_lineage(augment["out_uri"], result["dataset_uri"], console)


def print_example_lineage(augmented_uri: str, dataset_uri: str, console) -> None:
    """One generated sample traced to its real parent, as `tailforge lineage` shows it, over the
    catalog of the folder that holds both datasets (a hint when they share none)."""
    from tasks.catalog import open_catalog
    from tasks.dataset import existing_rows
    from tasks.lineage import lineage

    generated = existing_rows(augmented_uri, ["sample_id"])
    if generated is None or generated.num_rows == 0:
        return
    sample_id = generated.column("sample_id")[0].as_py()
    local = not any("://" in u for u in (augmented_uri, dataset_uri))
    root = os.path.commonpath([os.path.abspath(augmented_uri), os.path.abspath(dataset_uri)]) if local else None
    if not root or root == os.path.sep:
        console.print(f"trace a generated sample: tailforge lineage {sample_id[:16]} --root <a folder holding "
                      f"{augmented_uri} and {dataset_uri}>")
        return
    console.print(f"one generated sample and where it came from (tailforge lineage {sample_id[:16]} --root {root}):")
    with open_catalog(root) as catalog:
        print_lineage(lineage(catalog, sample_id))


COMMANDS = {"ingest": cmd_ingest, "phantom": cmd_phantom, "info": cmd_info, "plan": cmd_plan,
            "decisions": cmd_decisions, "lineage": cmd_lineage, "query": cmd_query, "runs": cmd_runs,
            "pretrain": cmd_pretrain, "augment": cmd_augment, "finetune": cmd_finetune, "run": cmd_run,
            "config": cmd_config, "demo": cmd_demo}


def storage_errors() -> tuple[type[Exception], ...]:
    """What an unreachable storage endpoint raises (botocore and aiohttp, under s3fs)."""
    errors: list[type[Exception]] = []
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError  # endpoint, connect timeout
        from botocore.exceptions import HTTPClientError  # read timeout, connection closed
        errors += [BotoConnectionError, HTTPClientError]
    except ImportError:
        pass
    try:
        from aiohttp import ClientError
        errors.append(ClientError)
    except ImportError:
        pass
    return tuple(errors)


def storage_message(exc: Exception) -> str:
    """One line: which endpoint could not be reached, and what to do."""
    from urllib.parse import urlsplit

    from tasks.store import storage_options_from_env

    url = (getattr(exc, "kwargs", None) or {}).get("endpoint_url") or \
        storage_options_from_env().get("client_kwargs", {}).get("endpoint_url")
    parts = urlsplit(url) if url else None  # botocore names the object's URL: keep scheme and host
    endpoint = f"{parts.scheme}://{parts.netloc}" if parts else "the default AWS S3 endpoint"
    reason = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
    return (f"cannot reach the storage endpoint {endpoint} ({reason}). Check that it is up and that "
            f"TAILFORGE_S3_ENDPOINT_URL and the AWS credentials point at it, then run the same command "
            f"again: finished shards are kept and a re-run adds only what is missing")


def _console():
    """Rich output: the terminal's width on a terminal; piped, no wrapping at 80 columns (ids and
    JSON stay on one line for the next program)."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=400, soft_wrap=True)


def user_message(exc: Exception) -> str:
    """One line for the user; Prefect's temporary-server timeout becomes what to do about it."""
    if str(exc).startswith(EPHEMERAL_TIMEOUT):
        return (f"Prefect's temporary server did not start within "
                f"{os.environ.get('PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS', EPHEMERAL_START_S)} s (a busy "
                f"machine, or a locked SQLite file under PREFECT_HOME). Run it on a lasting server instead: add "
                f"--local-server (started once under $TAILFORGE_HOME, reused after), or set PREFECT_API_URL, or "
                f"wait longer with PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS")
    return str(exc)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status = COMMANDS[args.command](args)
        sys.stdout.flush()  # a closed pipe shows here, not as a traceback at interpreter exit
        return status
    except BrokenPipeError:  # `tailforge ... --json | head`: the reader left; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except USER_ERRORS as exc:
        print(f"tailforge {args.command}: error: {user_message(exc)}", file=sys.stderr)
        return 2
    except storage_errors() as exc:  # an S3 outage: one line, not a botocore traceback
        print(f"tailforge {args.command}: error: {storage_message(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
