"""The ``tailforge`` command.

    tailforge ingest nih|chexpert|mimic|folder TABLE IMAGES_DIR [--out URI] [--split-csv CSV] [--size N]
    tailforge phantom [--n N] [--size S] [--seed K] [--vocab nih|chexpert] [--out URI]
    tailforge info URI [--json]
    tailforge verify URI [--json]
    tailforge plan DATASET_URI [--judge rules|anthropic|none] [--json] [--export URI]
    tailforge decisions [--json] [--export URI]
    tailforge lineage SAMPLE_ID [--root URI] [--json]
    tailforge query "SQL" [--root URI] [--json|--csv] [--timeout S]
    tailforge runs [--root URI]
    tailforge pretrain DATASET_URI [--config YAML] [--models URI]
    tailforge augment DATASET_URI --classifier URI --generator URI [--config YAML] [--out URI]
    tailforge finetune DATASET_URI --classifier URI [--augmented URI] [--config YAML] [--out URI]
    tailforge run CONFIG.yaml [--local-server]
    tailforge config [CONFIG.yaml] [--json] [--reference | --schema]
    tailforge demo [--stop]

Errors that a user can fix (a missing column, a missing file, an incompatible dataset, a
dataset another writer holds, an unreachable storage endpoint) print one line saying what to
do and exit with status 2; no traceback. The parser is flows/cli_parser.py; the one-line
messages, flows/cli_errors.py.

Longer than ~300 lines: one short function per command (17); the parser and the error messages
are their own modules.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import _thread
import threading

from flows.cli_errors import (EPHEMERAL_START_S, USER_ERRORS, credential_errors, storage_errors, storage_message,
                              user_message)
from flows.cli_parser import build_parser
from flows.permanent import PERMANENT_ERRNO
from flows.printers import (print_augment, print_csv, print_decisions, print_finetune, print_ingest_report,
                            print_lineage, print_plan, print_pretrain, print_quarantine, print_run, print_runs,
                            print_summary, print_table, progress_bar)
from flows.server_watch import GRACE_S, ServerWatch, answers
from flows.settings import DatasetSettings, KnowledgeSettings, default_dataset_uri, tailforge_home

def _tail(text: str | None) -> tuple[str, ...] | None:
    return tuple(t.strip() for t in text.split(",") if t.strip()) if text else None


def cmd_ingest(args: argparse.Namespace) -> int:
    from tasks.ingest import ingest_source
    from tasks.sources import READERS

    given = {name: getattr(args, name) for name in READERS[args.kind].options}  # this kind's options
    settings = DatasetSettings(source=args.kind, table=args.table, images=args.images, split_csv=args.split_csv,
                               size=args.size, tail=_tail(args.tail), shard_rows=args.shard_rows,
                               workers=args.workers, allow_missing=args.allow_missing,
                               follow_symlinks=args.follow_symlinks, **given)
    out = args.out or default_dataset_uri(args.kind)
    with progress_bar(f"ingest {args.kind}", not args.json) as progress:
        report = ingest_source(settings, out, progress)
    return _print_report(report, args.json)


def cmd_phantom(args: argparse.Namespace) -> int:
    from tasks.ingest import ingest_phantom

    out = args.out or default_dataset_uri("phantom")
    with progress_bar("phantom", not args.json) as progress:
        report = ingest_phantom(out, args.n, args.size, args.seed, args.vocab, args.shard_rows,
                                _tail(args.tail), progress)
    return _print_report(report, args.json)


def _print_report(report, as_json: bool) -> int:
    if as_json:
        print(json.dumps(report.to_json(), indent=2))
        return 0
    print_ingest_report(report)
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


def cmd_verify(args: argparse.Namespace) -> int:
    from tasks.dataset import verify_dataset

    report = verify_dataset(args.uri)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    unchecked = report["shards"] - report["sealed"]
    print(f"{args.uri}: {report['shards']} shards, {report['bytes'] / 1e6:.1f} MB, match their names "
          f"({report['seconds']:.1f} s)" + (f"; {unchecked} written before content digests could not be checked"
                                            if unchecked else ""))
    return 0


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


def cmd_decisions(args: argparse.Namespace) -> int:
    from tasks.knowledge import DecisionCache, export_decisions

    with DecisionCache(KnowledgeSettings(cache=args.cache).cache_path(), read_only=True) as cache:
        decisions = cache.all()
    if args.export:
        print(f"{len(decisions)} decisions written to {export_decisions(decisions, args.export)}")
    if args.json:
        print(json.dumps([d.to_row() for d in decisions], indent=2, default=str))
    elif not args.export:
        print_decisions(decisions)
    return 0


def _catalog(args: argparse.Namespace, shards: bool = True):
    from tasks.catalog import TIMEOUT_S, open_catalog

    return open_catalog(args.root or str(tailforge_home()), timeout_s=getattr(args, "timeout", TIMEOUT_S),
                        shards=shards)


def cmd_lineage(args: argparse.Namespace) -> int:
    from tasks.lineage import lineage

    with _catalog(args) as catalog:
        result = lineage(catalog, args.sample_id)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return 0
    print_lineage(result)
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    from tasks.bounded_query import bounded_query

    columns, rows = bounded_query(args.root or str(tailforge_home()), args.sql, args.limit, args.timeout)
    if args.json:
        print(json.dumps([dict(zip(columns, r)) for r in rows], indent=2, default=str))
    elif args.csv:
        print_csv(columns, rows)
    else:
        print_table(columns, rows)
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from tasks.catalog import query
    from tasks.lineage import drop_nulls

    with _catalog(args, shards=False) as catalog:  # run records only: a corrupt shard does not hide them
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


def _use_prefect_server(args: argparse.Namespace, start_local: bool | None = None) -> str:
    """PREFECT_API_URL when set (it must answer now); else the demo's local server (started if
    needed). A server the run uses is watched: lost mid-run, it ends the command with one line."""
    from flows import server

    url = os.environ.get("PREFECT_API_URL")
    if url and not answers(url):
        raise RuntimeError(f"the Prefect server at {url} (PREFECT_API_URL) does not answer: start it, or point "
                           f"PREFECT_API_URL at one that runs, or unset it to run on a temporary local server")
    if not url:
        if not (args.local_server if start_local is None else start_local):
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
    _watch_server(url, args.command)
    return url


_WATCH: list[ServerWatch] = []  # the server watch of the command running in this process


def _watch_server(url: str, command: str) -> None:
    """Watch the Prefect server at ``url`` while the command runs (flows/server_watch.py): when it
    is lost, one line, the main thread interrupted, and exit 2 if the run is not over in GRACE_S."""
    def lost(silent: float) -> None:
        print(f"tailforge {command}: error: lost the Prefect server at {url} (no answer for {silent:.0f} s); the "
              f"run stopped and what it wrote stays. Start the server again and run the same command: it marks "
              f"this run Crashed in the UI and goes on from what was written", file=sys.stderr, flush=True)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stderr.fileno())  # Prefect's own retries: noise now
        _thread.interrupt_main()
        if not watch.wait_stopped(GRACE_S):  # Prefect still reporting the crash to the dead server
            os._exit(2)

    watch = ServerWatch(url, lost).start()
    _WATCH.append(watch)


def cmd_run(args: argparse.Namespace) -> int:
    from flows.settings import load_settings
    from tasks import store

    settings = load_settings(args.config)  # fail on a bad file before any server or flow starts
    for uri in (settings.dataset_uri(), settings.output_uri(), settings.models_uri()):
        store.exists(uri)  # storage reached with these credentials, or one line before any stage
    store.must_exist("classifier checkpoint", settings.classifier.checkpoint)  # (the flow checks again: a nightly
    store.must_exist("dit checkpoint", settings.generator.checkpoint)  # has no CLI)
    url = _use_prefect_server(args)  # before Prefect is imported: it reads PREFECT_API_URL once, at import
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
    _use_prefect_server(args)
    from flows.pretrain import pretrain_flow

    result = pretrain_flow(args.uri, args.models or settings.models_uri(), settings.classifier, settings.generator)
    return _print_result(result, args.json, lambda r: print_pretrain(r, args.uri))


def cmd_augment(args: argparse.Namespace) -> int:
    from tasks import store
    from tasks.pretrain import named_checkpoint

    settings = _step_settings(args)
    classifier, generator = named_checkpoint("classifier", args.classifier), named_checkpoint("dit", args.generator)
    out = args.out or store.join(settings.output_uri(), "augmented")
    _use_prefect_server(args)
    from flows.augment import augment_flow

    result = augment_flow(args.uri, out, classifier, generator, settings.knowledge, settings.augment,
                          settings.cache_path())
    return _print_result(result, args.json, print_augment)


def cmd_finetune(args: argparse.Namespace) -> int:
    from flows.settings import finetune_settings
    from tasks import store
    from tasks.pretrain import named_checkpoint

    settings = _step_settings(args)
    named_checkpoint("classifier", args.classifier)  # fails clearly when absent
    out = args.out or store.join(settings.output_uri(), "report")
    _use_prefect_server(args)
    from flows.finetune import finetune_and_report_flow

    result = finetune_and_report_flow(args.uri, args.augmented, args.classifier, out, finetune_settings(settings))
    return _print_result(result, args.json, print_finetune)


def cmd_config(args: argparse.Namespace) -> int:
    from flows.settings import settings_or_defaults

    if args.reference:
        from flows.settings_reference import markdown

        print(markdown(), end="")
        return 0
    if args.schema:
        from flows.settings_reference import schema

        print(json.dumps(schema(), indent=2))
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
    url = _use_prefect_server(args, start_local=True)
    server.ensure_gpu_limit(1)
    from flows.factory import factory_flow

    config = str(resources.files("flows").joinpath("demo.yaml"))
    result = factory_flow(config_path=config, overrides={"dataset": {"n": args.n}} if args.n else None)
    print_run(result, url)
    print(f"\ndemo wall time: {time.perf_counter() - started:.0f} s")
    print("the Prefect server keeps running for you; stop it with: tailforge demo --stop")
    return 0


COMMANDS = {"ingest": cmd_ingest, "phantom": cmd_phantom, "info": cmd_info, "verify": cmd_verify, "plan": cmd_plan,
            "decisions": cmd_decisions, "lineage": cmd_lineage, "query": cmd_query, "runs": cmd_runs,
            "pretrain": cmd_pretrain, "augment": cmd_augment, "finetune": cmd_finetune, "run": cmd_run,
            "config": cmd_config, "demo": cmd_demo}


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler or `kill` stopping the command), raised where Ctrl-C would be: every
    run record open then ends "interrupted" and temp files are removed on the way out."""


def _terminate(signum, frame) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    try:
        status = _run_command(args)
    except BaseException:
        if not any(watch.lost for watch in _WATCH):
            raise
        status = 2
    finally:
        lost = any(watch.lost for watch in _WATCH)
        while _WATCH:
            _WATCH.pop().stop()
    return 2 if lost else status  # a lost server: its watch said so in one line


def _run_command(args: argparse.Namespace) -> int:
    """The command, with every mistake a user can fix as one line and exit 2."""
    try:
        status = COMMANDS[args.command](args)
        sys.stdout.flush()  # a closed pipe shows here, not as a traceback at interpreter exit
        return status
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: one line; the run records say "interrupted"
        what = "stopped by SIGTERM" if isinstance(exc, Terminated) else "interrupted (Ctrl-C)"
        print(f"tailforge {args.command}: {what}: what was written stays, and the same command goes on from it",
              file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    except BrokenPipeError:  # `tailforge ... --json | head`: the reader left; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except USER_ERRORS as exc:
        print(f"tailforge {args.command}: error: {user_message(exc)}", file=sys.stderr)
        return 2
    except credential_errors() as exc:
        print(f"tailforge {args.command}: error: no usable AWS credentials for S3 ({exc}): set AWS_ACCESS_KEY_ID "
              f"and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) for the bucket, then run the same command again",
              file=sys.stderr)
        return 2
    except storage_errors() as exc:  # an S3 outage: one line, not a botocore traceback
        print(f"tailforge {args.command}: error: {storage_message(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk, a quota, a read-only mount: the user frees or moves, then reruns
        if exc.errno not in PERMANENT_ERRNO:
            raise
        where = f" writing {exc.filename}" if exc.filename else ""
        print(f"tailforge {args.command}: error: {os.strerror(exc.errno)}{where}: free space or write elsewhere, "
              f"then run the same command again (finished shards are kept, nothing half-written)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
