"""Sections of benchmarks/reliability.py (issue 12, "a reliability suite in the project"). Each
returns the suite's counts (trials, survived, lost, duplicated, crashes, hangs, leaks) and its
details; every command it starts runs under a time limit, and one that runs past it is a hang."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import ROOT
from benchmarks.reliability_corpus import NIH_HEADER, PATIENT_TAGS, build, image_bytes, pattern

COUNTS = ("trials", "survived", "lost", "duplicated", "crashes", "hangs", "leaks")
COMMAND_LIMIT_S = 180.0  # one CLI command of this suite at its small sizes takes seconds
API_KEY = "sk-ant-reliability-KEY-do-not-leak"
LLM_MODES = {"ok": None, "timeout": "timeout", "429": "rate_limit", "500": "server_error", "529": "overloaded",
             "429-day": "rate_limit", "malformed": "malformed", "notool": "malformed",
             "invalid": "invalid_answer", "refusal": "refusal"}  # benchmarks/fake_anthropic.py mode -> fallback kind


def tally(**counts: int) -> dict:
    return {key: int(counts.get(key, 0)) for key in COUNTS}


def add(total: dict, part: dict) -> None:
    for key in COUNTS:
        total[key] += part[key]


def cli(args: list[str], limit_s: float = COMMAND_LIMIT_S, env: dict | None = None) -> dict:
    """``python -m flows.cli ARGS`` from this checkout; rc None when it ran past ``limit_s``."""
    started = time.monotonic()
    done = finish(start_cli(args, env), limit_s)
    return {**done, "seconds": round(time.monotonic() - started, 2)}


def finish(child: subprocess.Popen, limit_s: float = COMMAND_LIMIT_S) -> dict:
    """Wait for a started command; stopped (rc None) when it runs past ``limit_s``: first with
    SIGABRT, so its stderr ends with every thread's stack (start_cli turns faulthandler on), then
    killed."""
    try:
        out, err = child.communicate(timeout=limit_s)
        return {"rc": child.returncode, "out": out, "err": err}
    except subprocess.TimeoutExpired:
        child.send_signal(signal.SIGABRT)
        try:
            out, err = child.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            out, err = child.communicate()
        return {"rc": None, "out": out, "err": err}


def leftovers(folder: Path) -> list[str]:
    """Temporary files (store.write_bytes_atomic) and holder records a finished writer should not leave."""
    temps = [str(p) for p in folder.rglob(".*.tmp-*")]
    lock = folder / ".tailforge.lock"
    return temps + ([str(lock)] if lock.exists() and lock.read_bytes().strip() else [])


def dataset_rows(out: Path | str) -> tuple[list[str], dict[str, bytes]]:
    """(every sample id as stored, first image bytes per id); ``out`` a folder or a URI."""
    from tasks.dataset import existing_rows

    table = existing_rows(str(out), ["sample_id", "image"])
    if table is None:
        return [], {}
    ids, images = table.column("sample_id").to_pylist(), table.column("image").to_pylist()
    first: dict[str, bytes] = {}
    for sample_id, image in zip(ids, images):
        first.setdefault(sample_id, image)
    return ids, first


def compare(reference: dict[str, bytes], out: Path) -> dict:
    """Rows lost (missing or changed bytes), duplicated and unexpected against an uninterrupted run."""
    ids, got = dataset_rows(out)
    changed = sum(1 for k, v in reference.items() if k in got and got[k] != v)
    return {"rows": len(ids), "lost": len(set(reference) - set(got)) + changed, "changed": changed,
            "duplicated": len(ids) - len(got), "unexpected": len(set(got) - set(reference))}


# ------------------------------------------------------------------ kill -9 of ingest, then resume
def plain_table(root: Path, n: int) -> tuple[Path, Path]:
    """An NIH-style table over ``n`` distinct PNGs: the `ingest nih` path (thread pool, decode)."""
    images = root / "plain-images"
    images.mkdir(parents=True)
    findings = ["Mass", "Effusion", "Cardiomegaly|Nodule", "No Finding", "Hernia", "Atelectasis"]
    rows = []
    for i in range(n):
        (images / f"{i:05d}.png").write_bytes(image_bytes(pattern(1000 + i)))
        rows.append(",".join([f"{i:05d}.png", findings[i % len(findings)], "0", str(i // 2), "50", "F", "PA"]))
    table = root / "plain.csv"
    table.write_text("\n".join([",".join(NIH_HEADER), *rows]) + "\n")
    return table, images


def writer_commands(args, table: Path, images: Path) -> dict:
    """The two writers under test: out URI -> CLI arguments."""
    common = ["--size", str(args.size), "--shard-rows", str(args.shard_rows), "--json"]
    return {"phantom": lambda out: ["phantom", "--n", str(args.n), "--seed", str(args.seed), "--out", out, *common],
            "ingest": lambda out: ["ingest", "nih", str(table), str(images), "--workers", "2", "--out", out, *common]}


# a random time; once a random number of shards exist; mid-write of a file (a shard, or the manifest
# after the last shard) once a random number of shards exist
KILL_POINTS = ("delay", "shards", "temp")
POLL_S = 0.001


def _shards(out: Path) -> int:
    return len(list((out / "samples").glob("part-*.parquet")))


def _writing(out: Path) -> bool:
    """A temporary file exists: a shard or the manifest is being written (store.write_bytes_atomic)."""
    return any((out / "samples").glob(".part-*.tmp-*")) or any(out.glob(".dataset.json.tmp-*"))


def _kill_when(child: subprocess.Popen, ready, limit_s: float = COMMAND_LIMIT_S) -> tuple[bool, float]:
    """SIGKILL the child once ``ready()`` holds; (it had finished by itself, seconds from start)."""
    started = time.monotonic()
    while child.poll() is None and not ready() and time.monotonic() - started < limit_s:
        time.sleep(POLL_S)
    finished = child.poll() is not None
    if not finished:
        os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
    return finished, round(time.monotonic() - started, 3)


def kill_trial(command: list[str], out: Path, point: tuple[str, float], reference: dict[str, bytes]) -> dict:
    """Start a writer, SIGKILL it at ``point``, run it again to the end, compare with the reference."""
    kind, value = point
    started = time.monotonic()
    ready = {"delay": lambda: time.monotonic() - started >= value, "shards": lambda: _shards(out) >= value,
             "temp": lambda: _shards(out) >= value and _writing(out)}[kind]
    child = subprocess.Popen([sys.executable, "-m", "flows.cli", *command], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    finished, killed_at = _kill_when(child, ready)
    at_kill = {"rows": len(dataset_rows(out)[0]), "temps": len(list(out.rglob(".*.tmp-*"))),
               "manifest": (out / "dataset.json").exists()}
    resumed = cli(command)
    result = {"point": kind, "value": round(value, 2), "killed_after_s": killed_at, "finished_before_kill": finished,
              "at_kill": at_kill, "resume_rc": resumed["rc"], "resume_s": resumed["seconds"],
              "leftovers": len(leftovers(out)), **compare(reference, out)}
    if resumed["rc"] not in (0, None):
        result["error"] = resumed["err"].strip().splitlines()[-1:]
    return result


def _kill_point(k: int, kinds: int, wall: float, shards: int, rng: random.Random, strata: int) -> tuple[str, float]:
    """Trial k's kill point: kinds alternate, then points cycle; delays and shard counts are drawn
    at random, one per stratum, so the trials spread over the run."""
    point = KILL_POINTS[(k // kinds) % len(KILL_POINTS)]
    stratum = k // (kinds * len(KILL_POINTS))
    if point == "delay":
        return point, wall * (stratum + rng.random()) / strata
    if point == "shards":
        return point, 1 + int((shards - 1) * (stratum + rng.random()) / strata)
    return point, int((shards + 1) * (stratum + rng.random()) / strata)  # temp: 0..shards shards first


def section_ingest_kill(args, work: Path) -> dict:
    """kill -9 of `phantom` and `ingest nih` at random points, then a re-run (issue 12)."""
    table, images = plain_table(work, args.n)
    commands = writer_commands(args, table, images)
    reference, wall, shards = {}, {}, {}
    for kind, command in commands.items():
        done = cli(command(str(work / f"reference-{kind}")))
        if done["rc"] != 0:
            raise RuntimeError(f"the uninterrupted {kind} run failed: {done['err'][-500:]}")
        reference[kind], wall[kind] = dataset_rows(work / f"reference-{kind}")[1], done["seconds"]
        shards[kind] = _shards(work / f"reference-{kind}")
    rng, total, trials = random.Random(args.seed), tally(), []
    strata = -(-args.kills // (len(commands) * len(KILL_POINTS)))
    for k in range(args.kills):
        kind = list(commands)[k % len(commands)]
        point = _kill_point(k, len(commands), wall[kind], shards[kind], rng, strata)
        out = work / f"killed-{k}"
        trial = {"kind": kind, **kill_trial(commands[kind](str(out)), out, point, reference[kind])}
        ok = trial["resume_rc"] == 0 and not (trial["lost"] or trial["duplicated"] or trial["unexpected"]
                                              or trial["leftovers"])
        add(total, tally(trials=1, survived=ok, lost=trial["lost"], duplicated=trial["duplicated"],
                         crashes=trial["resume_rc"] not in (0, None), hangs=trial["resume_rc"] is None,
                         leaks=trial["leftovers"]))
        trials.append(trial)
    partial = sum(0 < t["at_kill"]["rows"] < args.n or t["at_kill"]["temps"] > 0 for t in trials)
    return {**total, "reference_s": wall, "reference_rows": {k: len(v) for k, v in reference.items()},
            "reference_shards": shards, "killed_mid_run": sum(not t["finished_before_kill"] for t in trials),
            "killed_mid_write": partial, "details": trials}


# ------------------------------------------------------------------ two writers into one --out
def section_concurrent(args, work: Path) -> dict:
    """Two writers of one kind into one --out at once: one is refused (status 2, naming the
    holder) or they run one after the other; never a duplicated row (issue 12, defect 4)."""
    table, images = plain_table(work, args.n)
    commands, total, trials = writer_commands(args, table, images), tally(), []
    for k in range(args.concurrent):
        kind = list(commands)[k % len(commands)]
        out = work / f"both-{k}"
        pair = [start_cli(commands[kind](str(out)) + ["--shard-rows", str(args.shard_rows + 7 * i)]) for i in (0, 1)]
        results = [finish(child) for child in pair]
        rerun = cli(commands[kind](str(out)))  # whatever a refused writer left to do
        ids, got = dataset_rows(out)
        refused = [r for r in results if r["rc"] == 2]
        clean = all(r["rc"] == 0 or (r["rc"] == 2 and "being written by" in r["err"]) for r in results)
        trial = {"kind": kind, "rcs": [r["rc"] for r in results], "refused_with_holder": len(refused),
                 "rerun_rc": rerun["rc"], "rows": len(ids), "unique": len(got), "expected": args.n,
                 "leftovers": len(leftovers(out))}
        ok = clean and rerun["rc"] == 0 and len(ids) == len(got) == args.n and not trial["leftovers"]
        add(total, tally(trials=1, survived=ok, lost=max(0, args.n - len(got)), duplicated=len(ids) - len(got),
                         crashes=sum(r["rc"] not in (0, 2, None) for r in results) + (rerun["rc"] not in (0, None)),
                         hangs=sum(r["rc"] is None for r in [*results, rerun]), leaks=trial["leftovers"]))
        trials.append(trial)
    return {**total, "details": trials}


def start_cli(command: list[str], env: dict | None = None) -> subprocess.Popen:
    env = {**(os.environ if env is None else env), "PYTHONFAULTHANDLER": "1"}  # a hung one shows where (finish)
    return subprocess.Popen([sys.executable, "-m", "flows.cli", *command], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


# ------------------------------------------------------------------ the hostile corpus
def section_hostile(args, work: Path) -> dict:
    """Ingest the corpus of benchmarks/reliability_corpus.py; every kind gets its reason."""
    table, images, kinds, server = build(work / "corpus")
    out = work / "hostile-ds"
    try:
        done = cli(["ingest", "nih", str(table), str(images), "--size", str(args.size), "--out", str(out), "--json"])
    finally:
        server.close()
    landed = set(_column(out, "samples", "source_uri"))
    reasons: dict[str, list[str]] = {}
    for path, code in zip(_column(out, "quarantine", "source_uri"), _column(out, "quarantine", "reason_code")):
        reasons.setdefault(path, []).append(code)
    details = []
    for kind in kinds:
        got = ["ok"] if kind.path in landed and kind.expected != "duplicate_row" else reasons.get(kind.path, [])
        details.append({"kind": kind.path, "expected": kind.expected, "got": got, "ok": kind.expected in got})
    tags = sum(tag in p.read_bytes() for p in out.rglob("*") if p.is_file() for tag in PATIENT_TAGS)
    survived = sum(d["ok"] for d in details) if done["rc"] == 0 else 0
    return {**tally(trials=len(kinds), survived=survived, crashes=done["rc"] not in (0, None),
                    hangs=done["rc"] is None, leaks=tags + len(leftovers(out))),
            "hostile_kinds": sum(k.expected != "ok" for k in kinds), "ingest_rc": done["rc"],
            "ingest_s": done["seconds"], "patient_tags_in_outputs": tags, "details": details}


def _column(dataset: Path | str, part: str, name: str) -> list:
    from tasks import store

    table = store.read_shards(store.join(str(dataset), part), [name])
    return table.column(name).to_pylist() if table is not None else []


# ------------------------------------------------------------------ the query fence
def section_fence(args, work: Path) -> dict:
    """The probes of tests/test_query_fence.py through `query` (layer 1 and 2), and the raw writes
    on the connection alone (layer 2): each refused, nothing written anywhere."""
    from benchmarks import query_probes as probes
    from tasks.catalog import QueryRefused, open_catalog, query

    world = probes.build_world(work)
    os.chdir(world["cwd"])  # DuckDB's default temp folder is <cwd>/.tmp
    details = []
    for layer, table in (("query", probes.PROBES), ("connection", probes.RAW_WRITES)):
        for name, sql in sorted(table.items()):
            before = probes.snapshot(world["root"], world["outside"], world["cwd"])
            with open_catalog(world["root"]) as catalog:
                refused = _refused(catalog, sql.format(**world), layer, QueryRefused)
                whole = query(catalog, "SELECT count(*) FROM samples")[1] == [(24,)]
            wrote = probes.snapshot(world["root"], world["outside"], world["cwd"]) != before
            details.append({"probe": name, "layer": layer, "refused": refused, "wrote": wrote, "catalog_whole": whole})
    writes = sum(d["wrote"] for d in details)
    return {**tally(trials=len(details), survived=sum(d["refused"] and not d["wrote"] and d["catalog_whole"]
                                                      for d in details), leaks=writes),
            "writes_through_fence": writes, "refused": sum(d["refused"] for d in details), "details": details}


def _refused(catalog, sql: str, layer: str, refusal: type) -> bool:
    """`query` must refuse; the connection alone must fail or, for a read, find nothing outside
    the root (as tests/test_query_fence.py checks)."""
    import duckdb

    try:
        if layer == "query":
            from tasks.catalog import query
            query(catalog, sql)
            return False
        rows = catalog.con.execute(sql).fetchall()
    except (refusal, duckdb.Error):
        return True
    return not any("secret" in str(r) for r in rows)


def section_llm(args, work: Path) -> dict:
    """`plan --judge anthropic` against benchmarks/fake_anthropic.py in every mode, each under a
    wall-clock bound: it finishes, falls back with the right kind, and the key leaks nowhere."""
    from benchmarks.fake_anthropic import FakeAnthropic
    from tasks.ingest import ingest_phantom

    dataset = str(work / "llm-ds")
    ingest_phantom(dataset, args.llm_n, size=args.size, seed=1)
    total, details = tally(), []
    for mode, kind in LLM_MODES.items():
        with FakeAnthropic(mode, delay_s=2.0) as fake:
            env = {**os.environ, "ANTHROPIC_BASE_URL": fake.url, "ANTHROPIC_API_KEY": API_KEY}
            cache = work / f"llm-{mode}.duckdb"
            done = cli(["plan", dataset, "--judge", "anthropic", "--cache", str(cache), "--json", "--llm-timeout",
                        "1", "--llm-retries", "1", "--llm-budget", "20"], limit_s=args.llm_bound, env=env)
            requests = len(fake.message_requests)
        details.append(_llm_outcome(mode, kind, done, requests, cache, args.llm_bound))
        last = details[-1]
        add(total, tally(trials=1, survived=last["ok"], crashes=done["rc"] not in (0, None),
                         hangs=done["rc"] is None, leaks=last["key_leaks"]))
    return {**total, "bound_s": args.llm_bound, "details": details}


def _llm_outcome(mode: str, kind: str | None, done: dict, requests: int, cache: Path, bound: float) -> dict:
    report = json.loads(done["out"]) if done["rc"] == 0 else {}
    fallbacks, label_sets = report.get("fallbacks", {}), len(report.get("label_sets", []))
    expected = {} if kind is None else {kind: label_sets}  # every label set falls back, with this kind
    blobs = [done["out"], done["err"], *(p.read_bytes().decode("latin-1") for p in cache.parent.glob(cache.name + "*"))]
    leaks = sum(API_KEY in b or API_KEY[-12:] in b for b in blobs)
    ok = done["rc"] == 0 and done["seconds"] < bound and fallbacks == expected and label_sets > 0 and not leaks
    return {"mode": mode, "rc": done["rc"], "seconds": done["seconds"], "label_sets": label_sets,
            "llm_calls": report.get("llm_calls"), "requests": requests, "fallbacks": fallbacks,
            "expected_fallbacks": expected, "key_leaks": leaks, "ok": ok}
