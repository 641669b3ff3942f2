"""Reliability suite (issue 12): kill -9 of ingest and of augment and resume, a hostile ingest
corpus, corruption at rest and other integrity trials (benchmarks/reliability_integrity.py), the
query fence probes, LLM fault modes, two writers into one dataset (ingest, plan,
augment), an S3 outage during ingest and augment, a killed holder of the `gpu` slot and a Prefect
server killed mid-run (benchmarks/reliability_server.py) on a real Prefect server; on loopback and
small data.

    python -m benchmarks.reliability [--n 300] [--size 32] [--kills 12] [--augment-kills 20] [--no-prefect]

Writes benchmarks/results/reliability.{json,md} (with ``--only``: reliability_<sections>.{json,md}):
per section trials, survived, lost, duplicated, crashes, hangs and leaks. Each section runs in
its own process under a time limit (a section that runs past it counts as a hang and is killed
with everything it started), and every command a section starts has a limit too, so the suite
always ends by itself. Not part of `make test`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import reliability_integrity, reliability_server
from benchmarks.common import RESULTS, ROOT, save
from benchmarks.reliability_sections import COUNTS, add, tally


SECTION_LIMIT_S = {"ingest_kill": 600, "augment_kill": 1500, "hostile": 300, "integrity": 1500, "fence": 300,
                   "llm": 480, "concurrent": 400, "concurrent_augment": 600, "s3_outage": 1800, "gpu_lease": 600, "server_lost": 1500}
NEEDS_PREFECT = ("augment_kill", "concurrent_augment", "s3_outage", "gpu_lease", "server_lost")  # a local Prefect server


def section(name: str):
    from benchmarks import (reliability_augment, reliability_integrity, reliability_lease, reliability_s3,
                            reliability_sections, reliability_server)

    for module in (reliability_sections, reliability_augment, reliability_s3, reliability_lease,
                   reliability_integrity, reliability_server):
        if hasattr(module, f"section_{name}"):
            return getattr(module, f"section_{name}")
    raise ValueError(f"no section {name}")


def run_section(name: str, args: argparse.Namespace, work: Path) -> dict:
    """Run one section in a child process (its own session), killed at its time limit."""
    work.mkdir(parents=True)
    result_file, log_file = work / "result.json", work / "log.txt"
    command = [sys.executable, "-m", "benchmarks.reliability", "--section", name, "--section-out", str(result_file),
               *_passthrough(args)]
    env = {**os.environ, "TAILFORGE_HOME": str(work / "home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    started = time.monotonic()
    with open(log_file, "w") as log:
        child = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        try:
            child.wait(timeout=SECTION_LIMIT_S[name])
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    seconds = round(time.monotonic() - started, 1)
    _stop_prefect_server(work / "home")
    if result_file.exists():
        return {**json.loads(result_file.read_text()), "seconds": seconds}
    tail = log_file.read_text().strip().splitlines()[-5:]
    hung = child.returncode == -signal.SIGKILL
    return {**tally(trials=1, crashes=not hung, hangs=hung), "seconds": seconds,
            "error": (f"ran past {SECTION_LIMIT_S[name]} s" if hung else f"exited {child.returncode}"), "log": tail}


def _stop_prefect_server(home: Path) -> None:
    """A server a killed section started (flows/server.py keeps its pid under the home)."""
    pid_file = home / "prefect" / "server.pid"
    if pid_file.exists():
        try:
            os.killpg(int(pid_file.read_text().strip()), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def _passthrough(args: argparse.Namespace) -> list[str]:
    return ["--n", str(args.n), "--size", str(args.size), "--shard-rows", str(args.shard_rows),
            "--kills", str(args.kills), "--concurrent", str(args.concurrent), "--seed", str(args.seed),
            "--llm-n", str(args.llm_n), "--llm-bound", str(args.llm_bound), "--lease-hold", str(args.lease_hold),
            "--augment-n", str(args.augment_n), "--augment-images", str(args.augment_images),
            "--augment-batch", str(args.augment_batch), "--augment-kills", str(args.augment_kills),
            "--outages", str(args.outages), "--flips", str(args.flips)]


def totals(results: dict) -> dict:
    total = tally()
    for result in results.values():
        add(total, result)
    return total


def markdown(payload: dict) -> str:
    s, sections = payload["settings"], payload["sections"]
    lines = ["# Reliability suite", "",
             f"Commit {payload['commit']}, {payload['machine']['cores']} cores, {payload['seconds']:.0f} s. "
             f"`python -m benchmarks.reliability {' '.join(s['argv'])}` (phantom/ingest n={s['n']} at {s['size']} px, "
             f"shards of {s['shard_rows']} rows). Loopback only; small data.", "",
             "| section | " + " | ".join(COUNTS) + " | seconds |", "|---|" + "---:|" * (len(COUNTS) + 1)]
    for name, r in sections.items():
        lines.append(f"| {name} | " + " | ".join(str(r[k]) for k in COUNTS) + f" | {r.get('seconds', '')} |")
    t = payload["totals"]
    lines.append("| **all** | " + " | ".join(f"**{t[k]}**" for k in COUNTS) + " | |")
    lines += ["", "lost: rows missing or with other bytes than an uninterrupted run; leaks: temporary files or "
              "lock records left after a finished run, DICOM patient tags in outputs, files written through the "
              "query fence, the API key outside the request.", ""]
    for name, r in sections.items():
        lines += [f"## {name}", "", *DETAILS.get(name, _error_lines)(r), ""]
    return "\n".join(lines)


def _error_lines(r: dict) -> list[str]:
    return [f"error: {r['error']}", "", "```", *r.get("log", []), "```"] if "error" in r else []


def _kill_lines(r: dict) -> list[str]:
    if "details" not in r:
        return _error_lines(r)
    lines = [f"Uninterrupted runs: {r['reference_rows']} rows in {r['reference_shards']} shards, "
             f"{r['reference_s']} s. {r['killed_mid_run']} of "
             f"{r['trials']} writers were killed mid-run (the others had finished), {r['killed_mid_write']} with part "
             f"of the dataset written (some shards, or a temporary file).", "",
             "Kill points: `delay N` N s after the start, `shards N` once N shards exist, `temp N` the moment a "
             "temporary file is seen once N shards exist (a shard being written, or the manifest after the last "
             "shard).", "",
             "| kind | kill point | killed after s | rows at kill | temps at kill | resume rc | rows | lost "
             "| duplicated | leftovers |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for t in r["details"]:
        point = f"{t['point']} {t['value']:g}"
        lines.append(f"| {t['kind']} | {point} | {t['killed_after_s']} | {t['at_kill']['rows']} | "
                     f"{t['at_kill']['temps']} | "
                     f"{t['resume_rc']} | {t['rows']} | {t['lost']} | {t['duplicated']} | {t['leftovers']} |")
    return lines


def _hostile_lines(r: dict) -> list[str]:
    if "details" not in r:
        return _error_lines(r)
    lines = [f"{r['trials']} kinds ({r['hostile_kinds']} hostile) in one `ingest nih` (rc {r['ingest_rc']}, "
             f"{r['ingest_s']} s); DICOM patient tags in outputs: {r['patient_tags_in_outputs']}.", "",
             "| path in the table | expected | got |", "|---|---|---|"]
    for d in r["details"]:
        shown = repr(d["kind"]) if len(d["kind"]) < 40 else repr(d["kind"][:12] + "…" + d["kind"][-8:])
        lines.append(f"| `{shown}` | {d['expected']} | {', '.join(d['got']) or '-'}{'' if d['ok'] else ' ✗'} |")
    return lines


def _fence_lines(r: dict) -> list[str]:
    if "details" not in r:
        return _error_lines(r)
    failed = [d["probe"] for d in r["details"] if not (d["refused"] and not d["wrote"] and d["catalog_whole"])]
    return [f"{r['trials']} probes ({sum(d['layer'] == 'query' for d in r['details'])} through `query`, "
            f"{sum(d['layer'] == 'connection' for d in r['details'])} on the locked connection alone): "
            f"{r['refused']} refused (or, on the connection, read nothing outside the root), "
            f"{r['writes_through_fence']} wrote anything under the root, outside it or in "
            f"the working directory. Not held: {', '.join(failed) or 'none'}."]


def _llm_lines(r: dict) -> list[str]:
    if "details" not in r:
        return _error_lines(r)
    lines = [f"`plan --judge anthropic --llm-timeout 1 --llm-retries 1 --llm-budget 20`, bound {r['bound_s']} s each.",
             "", "| mode | rc | seconds | label sets | requests | fallbacks | as expected |",
             "|---|---:|---:|---:|---:|---|---|"]
    for d in r["details"]:
        lines.append(f"| {d['mode']} | {d['rc']} | {d['seconds']} | {d['label_sets']} | {d['requests']} | "
                     f"{d['fallbacks'] or '-'} | {'yes' if d['ok'] else 'no'} |")
    return lines


def _concurrent_lines(r: dict) -> list[str]:
    if "details" not in r:
        return _error_lines(r)
    lines = ["| kind | exit statuses | refused naming the holder | rows | unique ids | expected |",
             "|---|---|---:|---:|---:|---:|"]
    for d in r["details"]:
        lines.append(f"| {d['kind']} | {d['rcs']} | {d['refused_with_holder']} | {d['rows']} | {d['unique']} | "
                     f"{d['expected']} |")
    return lines


def _lease_lines(r: dict) -> list[str]:
    if "lease_s" not in r:
        return _error_lines(r)
    return [f"Lease {r['lease_s']:.0f} s (Prefect's default: {r['prefect_default_lease_s']} s). Alive for "
            f"{r['held_alive_s']:.0f} s, the holder kept its slot: {r['slot_kept_while_alive']} (renewed). After "
            f"SIGKILL the slot was free in {r['freed_after_kill_s']} s (bound {r['bound_s']:.0f} s). A batch "
            f"waiting meanwhile logs: \"{r['wait_log_line']}\"."]


def _augment_kill_lines(r: dict) -> list[str]:
    if "details" not in r:
        return _error_lines(r)
    lines = [f"`tailforge augment` on a {r['reference_rows']}-row job ({r['reference_shards']} shards, "
             f"{r['reference_s']} s uninterrupted, on a local Prefect server). {r['killed_mid_run']} of {r['trials']} "
             f"runs were killed mid-run, {r['killed_mid_write']} with part of the output written.", "",
             "Kill points: `delay N` N s after the start (process start, plan, inside a batch), `shards N` once N "
             "shards exist (between batches), `temp N` the moment a shard's temporary file is seen once N shards "
             "exist, `manifest` the moment the manifest's temporary file is seen (after the last batch). Still "
             "running: run records or Prefect flow runs of the killed run not marked crashed after the resume.", "",
             "| kill point | killed after s | rows at kill | temps at kill | resume rc | batches rerun | rows | lost "
             "| duplicated | leftovers | still running |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for t in r["details"]:
        lines.append(f"| {t['point']} {t['value']:g} | {t['killed_after_s']} | {t['at_kill']['rows']} | "
                     f"{t['at_kill']['temps']} | {t['resume_rc']} | {t['batches_run']} | {t['rows']} | {t['lost']} | "
                     f"{t['duplicated']} | {t['leftovers']} | {t['still_running']} |")
    return lines


def _outage_lines(r: dict) -> list[str]:
    if "details" not in r:
        return _error_lines(r)
    lines = ["The writer reaches moto through a TCP gate that is closed once N shards exist: `refused` closes the "
             "listener and open connections, `reset` sends RST on open connections. Expected: the writer stops by "
             f"itself within {r['bound_s']:.0f} s with status 2 and one line naming the endpoint (ingest: the only "
             "line on stderr; augment: the last, after Prefect's run log, which shows the failed task's traceback "
             "as the UI does); the same command, once the gate is open again, completes to an uninterrupted "
             "run's rows.", "",
             "| kind | mode | cut after shards | stopped after s | rc | stderr lines | names the endpoint | re-run rc "
             "| rows | lost | duplicated | leftovers |", "|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    for t in r["details"]:
        lines.append(f"| {t['kind']} | {t['mode']} | {t['after_shards']} | {t['stopped_after_s']} | {t['rc']} | "
                     f"{t['stderr_lines']} | {'yes' if t['names_endpoint'] else 'no'} | {t['rerun_rc']} | {t['rows']} | "
                     f"{t['lost']} | {t['duplicated']} | {t['leftovers']} |")
    messages = sorted({t["message"] for t in r["details"] if t["rc"] == 2})
    return lines + ["", "Messages:", "", *[f"- `{m}`" for m in messages]]


DETAILS = {"ingest_kill": _kill_lines, "augment_kill": _augment_kill_lines, "hostile": _hostile_lines,
           "integrity": reliability_integrity.lines,
           "fence": _fence_lines, "llm": _llm_lines, "concurrent": _concurrent_lines,
           "concurrent_augment": _concurrent_lines, "s3_outage": _outage_lines, "gpu_lease": _lease_lines,
           "server_lost": reliability_server.lines}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="images per phantom/ingest writer (default 300)")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels (default 32)")
    parser.add_argument("--shard-rows", type=int, default=32, help="rows per shard: small, many shard writes")
    parser.add_argument("--kills", type=int, default=12, help="kill -9 trials of ingest (default 12, at least 5)")
    parser.add_argument("--concurrent", type=int, default=4, help="trials of two writers at once (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="kill points and phantom seed")
    parser.add_argument("--llm-n", type=int, default=120, help="phantom images for the LLM dataset (5 label sets)")
    parser.add_argument("--llm-bound", type=float, default=60.0, help="wall-clock bound per LLM fault run, s")
    parser.add_argument("--lease-hold", type=float, default=80.0, help="s the live holder keeps the gpu slot")
    parser.add_argument("--augment-n", type=int, default=1000, help="phantom images of the augment sections")
    parser.add_argument("--augment-images", type=int, default=24, help="candidates each augment run generates")
    parser.add_argument("--augment-batch", type=int, default=4, help="images per augment batch (one shard each)")
    parser.add_argument("--augment-kills", type=int, default=20, help="kill -9 trials of augment (default 20)")
    parser.add_argument("--outages", type=int, default=4, help="S3 outages per writer kind (ingest, augment)")
    parser.add_argument("--flips", type=int, default=50, help="single-bit flips in shards, each read by 4 commands")
    parser.add_argument("--no-prefect", action="store_true", help="skip the sections that need a Prefect server")
    parser.add_argument("--only", nargs="+", choices=list(SECTION_LIMIT_S), help="run only these sections")
    parser.add_argument("--section", choices=list(SECTION_LIMIT_S), help=argparse.SUPPRESS)
    parser.add_argument("--section-out", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.section:  # inside a section's child process
        with tempfile.TemporaryDirectory(prefix=f"tf-{args.section}-") as work:
            result = section(args.section)(args, Path(work))
        Path(args.section_out).write_text(json.dumps(result, default=str))
        return 0
    names = args.only or [n for n in SECTION_LIMIT_S if not (args.no_prefect and n in NEEDS_PREFECT)]
    started, results = time.monotonic(), {}
    with tempfile.TemporaryDirectory(prefix="tf-reliability-") as base:
        for name in names:
            print(f"reliability: {name} ...", flush=True)
            results[name] = run_section(name, args, Path(base) / name)
            print(f"  {name}: " + ", ".join(f"{k} {results[name][k]}" for k in COUNTS), flush=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("section", "section_out")}
    payload = {"settings": {**settings, "argv": sys.argv[1:] if argv is None else argv}, "totals": totals(results),
               "sections": results, "seconds": round(time.monotonic() - started, 1)}
    name = "reliability" + ("_" + "_".join(args.only) if args.only else "")  # a partial run keeps the whole report
    path = save(name, payload)
    (RESULTS / f"{name}.md").write_text(markdown(json.loads(path.read_text())) + "\n")
    counts = ", ".join(f"{k} {v}" for k, v in payload["totals"].items())
    print(f"wrote {path} and {RESULTS / f'{name}.md'}: {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
