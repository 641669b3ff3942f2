"""The integrity section of benchmarks/reliability.py (issue 35): corruption at rest, datasets of
another kind, hostile settings and queries, each through the real `tailforge` commands.

- ``flip``: one bit flipped at a random byte of a random shard (its labels column, its image
  column, or anywhere in the file), then `info`, `verify`, `query` and `plan` on the copy: each
  must exit 2 with one line naming the shard. Exit 0 is a silent wrong result (counted as lost).
- ``contaminate``: `phantom --out` a real dataset and `ingest` into a phantom one: refused in one
  line, the dataset byte-identical after.
- ``bounds``: a settings file of nested aliases (`config`), a string past the query's memory
  limit, a query past its time limit, outputs in system folders and a name that climbs out of
  $TAILFORGE_HOME: one line, exit 2.
- ``stops``: SIGTERM and SIGINT to a writing `phantom`: one line, exit 143 / 130, its run
  record "interrupted", no temporary file, and a rerun writes none of the finished shards again.
- ``runs`` over a dataset with a flipped bit: the run records still list (exit 0).
- ``symlinked``: a shard replaced by a link to a file outside the dataset: `info` and `query`
  refuse it by name. ``disk_full`` (as root): `phantom` onto a 1 MB tmpfs: one line, exit 2, no
  temporary file left.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq

from benchmarks.reliability_corpus import NIH_HEADER, image_bytes, pattern
from benchmarks.reliability_sections import cli, finish, leftovers, start_cli, tally

COMMANDS = {"info": lambda ds, work: ["info", ds, "--json"], "verify": lambda ds, work: ["verify", ds],
            "query": lambda ds, work: ["query", "SELECT split, count(*) FROM samples GROUP BY ALL", "--root", ds],
            "plan": lambda ds, work: ["plan", ds, "--judge", "none", "--cache", str(work / "decisions.duckdb")]}
ALIAS_BOMB = "\n".join(['l0: &l0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]',
                        *[f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 9)],
                        "dataset: {tail: *l8}"]) + "\n"


def section_integrity(args, work: Path) -> dict:
    clean = work / "phantom"
    made = cli(["phantom", "--n", str(args.n), "--size", str(args.size), "--shard-rows", str(args.shard_rows),
                "--seed", str(args.seed), "--out", str(clean)])
    if made["rc"] != 0:
        return {**tally(trials=1, crashes=1), "error": f"phantom exited {made['rc']}", "log": made["err"][-400:]}
    rng = random.Random(args.seed)
    details = [trial for i in range(args.flips)
               for trial in _flip(clean, work / f"flip{i}", rng, ("labels", "image", "anywhere")[i % 3])]
    details += [*_contaminate(clean, work), *_bounds(work, str(clean)), *_stops(work), _runs_beside(clean, work),
                *_symlinked(clean, work), *_disk_full(work)]
    counts = {k: sum(d[k] for d in details) for k in ("survived", "lost", "crashes", "hangs", "leaks")}
    return {**tally(trials=len(details), **counts), "flips": args.flips, "details": details}


def _flip(clean: Path, copy: Path, rng: random.Random, where: str) -> dict:
    """One bit flipped in a copy of the dataset, then every reading command on it."""
    shutil.copytree(clean, copy)
    shards = sorted((copy / "samples").glob("part-*.parquet"))
    shard = rng.choice(shards)
    data = bytearray(shard.read_bytes())
    start, length = _span(shard, where, len(data))
    at = start + rng.randrange(length)
    data[at] ^= 1 << rng.randrange(8)
    shard.write_bytes(bytes(data))
    trials = []
    for name, command in COMMANDS.items():
        done = cli(command(str(copy), copy.parent))
        err = done["err"].strip().splitlines()
        named = done["rc"] == 2 and len(err) == 1 and shard.name in err[0]
        trials.append({"trial": f"flip {where} byte {at} of {shard.name[:18]}…: {name}", "rc": done["rc"],
                       "seconds": done["seconds"], "message": (err or [""])[-1][:200], "survived": named,
                       "lost": done["rc"] == 0, "crashes": done["rc"] not in (0, 2, None),
                       "hangs": done["rc"] is None, "leaks": 0})
    shutil.rmtree(copy)
    return trials


def _span(shard: Path, where: str, size: int) -> tuple[int, int]:
    """(first byte, length) of the column's data in row group 0, or the whole file."""
    if where == "anywhere":
        return 0, size
    meta = pq.ParquetFile(shard).metadata.row_group(0)
    chunk = next(meta.column(i) for i in range(meta.num_columns) if meta.column(i).path_in_schema.startswith(where))
    return chunk.dictionary_page_offset or chunk.data_page_offset, chunk.total_compressed_size


def _contaminate(clean: Path, work: Path) -> list[dict]:
    """Rows of another kind into a real dataset and into a phantom one: refused, nothing changed."""
    images, table = work / "films", work / "films.csv"
    images.mkdir()
    with open(table, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(NIH_HEADER)
        for i in range(6):
            (images / f"{i}.png").write_bytes(image_bytes(pattern(500 + i)))
            writer.writerow([f"{i}.png", "Mass", 0, i, 40, "M", "PA"])
    real = work / "real"
    cli(["ingest", "nih", str(table), str(images), "--size", "32", "--out", str(real)])
    out = []
    for name, target, command in (
            ("phantom --out a real dataset", real, ["phantom", "--n", "20", "--size", "32", "--out", str(real)]),
            ("ingest into a phantom dataset", clean,
             ["ingest", "nih", str(table), str(images), "--size", "32", "--out", str(clean)])):
        before = _tree(target)
        done = cli(command)
        err = done["err"].strip().splitlines()
        kept = _tree(target) == before
        out.append({"trial": name, "rc": done["rc"], "seconds": done["seconds"], "message": (err or [""])[-1][:200],
                    "survived": done["rc"] == 2 and len(err) == 1 and kept, "lost": int(not kept),
                    "crashes": done["rc"] not in (0, 2, None), "hangs": done["rc"] is None, "leaks": 0})
    return out


def _bounds(work: Path, root: str) -> list[dict]:
    bomb = work / "bomb.yaml"
    bomb.write_text(ALIAS_BOMB)
    out = []
    for name, command, says in (
            (f"a {len(ALIAS_BOMB)}-byte alias bomb", ["config", str(bomb)], "expands to more than"),
            ("repeat() past the memory limit", ["query", "SELECT length(repeat('x', 3000000000))", "--root", root],
             "memory"),
            ("a cross join past --timeout 2", ["query", "SELECT count(*) FROM range(100000) a, range(100000) b, "
                                               "range(100000) c", "--root", root, "--timeout", "2"], "time limit"),
            *((f"settings {text}", ["config", str(_settings(work, i, text))], says) for i, (text, says) in enumerate((
                ("output: /etc", "system folder /etc"), ('name: "../../x"', "plain name"),
                ("name: !!binary eA==", "plain name"), ("models: /", "root folder")))),
            ("phantom --out /proc/x", ["phantom", "--n", "4", "--size", "32", "--out", "/proc/x"], "system folder"),
            ("query current_setting()", ["query", "SELECT current_setting('secret_directory')", "--root", root],
             "current_setting")):
        done = cli(command, limit_s=60)
        err = done["err"].strip().splitlines()
        out.append({"trial": name, "rc": done["rc"], "seconds": done["seconds"], "message": (err or [""])[-1][:200],
                    "survived": done["rc"] == 2 and len(err) == 1 and says in err[0], "lost": 0,
                    "crashes": done["rc"] not in (0, 2, None), "hangs": done["rc"] is None, "leaks": 0})
    return out


def _settings(work: Path, i: int, text: str) -> Path:
    path = work / f"settings{i}.yaml"
    path.write_text(text + "\n")
    return path


def _stops(work: Path) -> list[dict]:
    """SIGTERM and SIGINT to a `phantom` once its first shard is written, then the same command again."""
    out = []
    for name in ("SIGTERM", "SIGINT"):
        folder = work / f"stopped-{name}"
        command = ["phantom", "--n", "200000", "--size", "32", "--shard-rows", "64", "--out", str(folder)]
        started = time.monotonic()
        child = start_cli(command)
        deadline = started + 120
        while not list(folder.glob("samples/part-*.parquet")) and time.monotonic() < deadline:
            time.sleep(0.2)
        child.send_signal(getattr(signal, name))
        done = finish(child, 120)
        err = done["err"].strip().splitlines()
        records = [json.loads(p.read_text()) for p in folder.glob("runs/*.json")]
        shards = len(list(folder.glob("samples/part-*.parquet")))
        again = cli(["phantom", "--n", str(64 * shards), "--size", "32", "--shard-rows", "64", "--out", str(folder),
                     "--json"])
        rewritten = json.loads(again["out"] or "{}").get("rows_written") if again["rc"] == 0 else None
        right = (done["rc"] == (143 if name == "SIGTERM" else 130) and len(err) == 1
                 and [r["status"] for r in records] == ["interrupted"] and not leftovers(folder) and rewritten == 0)
        out.append({"trial": f"{name} to phantom after {shards} shards, then the same command", "rc": done["rc"],
                    "seconds": round(time.monotonic() - started, 2), "message": (err or [""])[-1][:200],
                    "survived": right, "lost": int(rewritten is None), "crashes": done["rc"] not in (130, 143, None),
                    "hangs": done["rc"] is None, "leaks": len(leftovers(folder))})
    return out


def _runs_beside(clean: Path, work: Path) -> dict:
    """`tailforge runs` reads run records only: a flipped bit in a shard does not hide them."""
    copy = work / "runs-flipped"
    shutil.copytree(clean, copy)
    shard = sorted((copy / "samples").glob("part-*.parquet"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 1
    shard.write_bytes(bytes(data))
    done = cli(["runs", "--root", str(copy), "--json"])
    listed = done["rc"] == 0 and '"flow": "ingest"' in done["out"]
    return {"trial": "runs over a dataset with a flipped bit", "rc": done["rc"], "seconds": done["seconds"],
            "message": "lists the run records" if listed else done["err"].strip()[-200:], "survived": listed,
            "lost": 0, "crashes": done["rc"] not in (0, 2, None), "hangs": done["rc"] is None, "leaks": 0}


def _symlinked(clean: Path, work: Path) -> list[dict]:
    """A shard replaced by a symbolic link to a file outside the dataset: refused by name, not followed."""
    copy = work / "symlinked"
    shutil.copytree(clean, copy)
    shard = sorted((copy / "samples").glob("part-*.parquet"))[0]
    outside = work / "outside.parquet"
    shutil.move(shard, outside)
    shard.symlink_to(outside)
    out = []
    for name in ("info", "query"):
        done = cli(COMMANDS[name](str(copy), work))
        err = done["err"].strip().splitlines()
        right = done["rc"] == 2 and len(err) == 1 and "symbolic link" in err[0] and shard.name in err[0]
        out.append({"trial": f"a shard that is a symbolic link out of the dataset: {name}", "rc": done["rc"],
                    "seconds": done["seconds"], "message": (err or [""])[-1][:200], "survived": right,
                    "lost": int(done["rc"] == 0), "crashes": done["rc"] not in (0, 2, None),
                    "hangs": done["rc"] is None, "leaks": 0})
    return out


def _disk_full(work: Path) -> list[dict]:
    """A phantom written onto a 1 MB tmpfs: one line, exit 2, no temporary file (root only: mount)."""
    if os.geteuid() != 0:
        return []
    disk = work / "full-disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True).returncode:
        return []
    try:
        done = cli(["phantom", "--n", "3000", "--size", "64", "--shard-rows", "64", "--out", str(disk / "ds")])
        err = done["err"].strip().splitlines()
        left = leftovers(disk / "ds") if (disk / "ds").exists() else []
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)
    right = done["rc"] == 2 and len(err) == 1 and "No space left" in err[0] and not left
    return [{"trial": "phantom onto a full disk (1 MB tmpfs)", "rc": done["rc"], "seconds": done["seconds"],
             "message": (err or [""])[-1][:200], "survived": right, "lost": 0,
             "crashes": done["rc"] not in (2, None), "hangs": done["rc"] is None, "leaks": len(left)}]


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def lines(r: dict) -> list[str]:
    """The section's table for reliability.md: every trial, its exit status, time and message."""
    if "details" not in r:
        return [f"error: {r.get('error')}"]
    out = [f"{r['flips']} single-bit flips (labels column, image column, anywhere in the file, in turn), each "
           "read by `info`, `verify`, `query` and `plan`; then datasets of another kind and bounded inputs. "
           "Survived: exit 2 with one line naming the shard (or the bound); lost: exit 0 (a silent wrong result) "
           "or a dataset that changed.", "", "| trial | rc | seconds | message |", "|---|---:|---:|---|"]
    for d in r["details"]:
        out.append(f"| {d['trial']} | {d['rc']} | {d['seconds']} | {d['message'].replace('|', '/')} |")
    return out
