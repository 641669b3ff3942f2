"""What the ``tailforge`` command shows a person: the lines and tables of each command's result,
and the progress bar of a long step. With ``--json`` flows/cli.py prints the result itself
instead. rich is imported inside the functions that draw with it."""

from __future__ import annotations

import csv
import os
import sys
from contextlib import contextmanager
from typing import Iterator


def stdout_console():
    """Rich output: the terminal's width on a terminal; piped, no wrapping at 80 columns (ids and
    JSON stay on one line for the next program)."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=400, soft_wrap=True)


@contextmanager
def progress_bar(label: str, enabled: bool) -> Iterator:
    """A rich progress bar on a terminal; silent when printing JSON or not on a terminal."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress(label, BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True) as bar:
        task = bar.add_task(label, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def print_ingest_report(report) -> None:
    """What an ingest (or phantom) run wrote, left out and quarantined."""
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


def print_quarantine(rows: list[dict]) -> None:
    """The quarantine rows: what was not ingested, where it was in the table, and why."""
    from rich.table import Table

    table = Table("reason", "stage", "table line", "path", "why")
    for r in rows:
        ingest_row = r["stage"] == "ingest" and r["row"] is not None
        line = str(r["row"] + 2) if ingest_row else "-"  # a 0-based data row, after the header line
        table.add_row(r["reason_code"], r["stage"] or "-", line, r["source_uri"] or "-", r["reason"] or "")
    stdout_console().print(table if rows else "no quarantine rows")


def print_summary(summary: dict) -> None:
    from rich.table import Table

    console = stdout_console()
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
    leaking = summary.get("patients_in_several_splits") or {}
    if leaking:
        patient, where = next(iter(leaking.items()))
        console.print(f"[bold red]{len(leaking)} patients have images in more than one split[/] (e.g. patient "
                      f"{patient} in {', '.join(where)}): test figures on this dataset are optimistic; re-ingest "
                      f"into a new dataset with one split per patient")
    duplicates = summary.get("duplicate_ids") or {}
    if duplicates:
        console.print(f"[bold red]{len(duplicates)} sample ids are held more than once[/] "
                      f"({sum(duplicates.values()) - len(duplicates)} extra rows; e.g. {next(iter(duplicates))[:16]}): "
                      f"two writers ran at once. Re-ingest into a fresh --out to repair.")


def print_plan(report) -> None:
    from rich.table import Table

    console = stdout_console()
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


def print_decisions(decisions) -> None:
    """One line per cached decision: id, source, judge/model/prompt, the label set and its answer."""
    for d in decisions:
        print(f"{d.decision_id[:12]} {d.source:8s} {d.judge}/{d.model}/{d.prompt_version} "
              f"head={','.join(d.head)} tail={','.join(d.tail)} keep={','.join(d.keep) or '-'} "
              f"remove={','.join(d.remove) or '-'}" + (f" error={d.error}" if d.error else ""))


def print_lineage(result: dict) -> None:
    from tasks.dataset import GENERATED_ORIGINS

    summary = result["summary"]
    source = f"its real source {summary['source']}" if summary["source"] else "a real source not under this root"
    if summary["source"] and summary.get("source_exists") is False:
        source += " (NOT FOUND there now: moved or deleted since it was ingested)"
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
        elif step.get("source_path") or step.get("source_note"):
            note = f" ({step['source_note']})" if step.get("source_note") else ""
            print(f"    source {step.get('source_path') or step['source_uri']}{note}")
        if step.get("run_link"):
            print(f"    {step['run_link']}")


def print_table(columns: list[str], rows: list) -> None:
    """A query's rows as a table (NULL as an empty cell)."""
    from rich.table import Table

    table = Table(*columns)
    for r in rows:
        table.add_row(*["" if v is None else str(v) for v in r])
    stdout_console().print(table)


def print_csv(columns: list[str], rows: list) -> None:
    """A query's rows as CSV, a header line first."""
    writer = csv.writer(sys.stdout)
    writer.writerow(columns)
    writer.writerows(rows)


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
    stdout_console().print(table if records else "no runs recorded under this root yet")


def _when(value) -> str:
    return str(value)[:19].replace("T", " ") if value else "-"


def _duration(started, ended) -> str:
    from datetime import datetime

    if not started or not ended:
        return "-"
    seconds = (datetime.fromisoformat(str(ended)) - datetime.fromisoformat(str(started))).total_seconds()
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def print_pretrain(result: dict, dataset_uri: str) -> None:
    """The two checkpoints, and the augment command that uses them."""
    print(f"classifier: {result['classifier']['uri']}\ngenerator:  {result['generator']['uri']}\n"
          f"next: tailforge augment {dataset_uri} --classifier {result['classifier']['uri']} "
          f"--generator {result['generator']['uri']}")


def print_finetune(result: dict) -> None:
    """Where the report's files are."""
    for k, v in result["report"].items():
        print(f"{k + ':':11s} {v}")


def print_augment(augment: dict, console=None) -> None:
    """What augment wrote, accepted and quarantined, per removed class."""
    console = console or stdout_console()
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

    console = stdout_console()
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

    generated = existing_rows(augmented_uri, ["sample_id", "accepted"])
    if generated is None or generated.num_rows == 0:
        return
    accepted = [s for s, ok in zip(generated.column("sample_id").to_pylist(), generated.column("accepted").to_pylist())
                if ok]  # one that fine-tuning reads; a rejected one only where none was accepted
    sample_id = accepted[0] if accepted else generated.column("sample_id")[0].as_py()
    local = not any("://" in u for u in (augmented_uri, dataset_uri))
    root = os.path.commonpath([os.path.abspath(augmented_uri), os.path.abspath(dataset_uri)]) if local else None
    hint = (f"trace a generated sample: tailforge lineage {sample_id[:16]} --root <a folder holding "
            f"{augmented_uri} and {dataset_uri}>")
    if not root or root == os.path.sep:
        console.print(hint)
        return
    try:  # the catalog reads every dataset under root (e.g. all of /tmp): one bad one is not the run's
        with open_catalog(root) as catalog:
            found = lineage(catalog, sample_id)
    except Exception as exc:
        console.print(f"{hint} (the example could not read the catalog under {root}: "
                      f"{(str(exc).splitlines() or [type(exc).__name__])[0][:300]})")
        return
    console.print(f"one generated sample and where it came from (tailforge lineage {sample_id[:16]} --root {root}):")
    print_lineage(found)
