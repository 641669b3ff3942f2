"""The decision cache: one DuckDB table keyed by sha256(judge, model, prompt_version, label set).

A DuckDB file takes one writer, so decisions are made in the planning step, before any
fan-out; a second process opening the same cache waits for it (``LOCK_WAIT_S`` at most), then
is refused with a message naming the cache. Decisions are immutable (first write wins).
Fallback decisions are recorded under their own id and never served as hits: the next run asks
the LLM again.
"""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow as pa

from tasks import store
from tasks.knowledge.decision import Decision

COLUMNS = ("key", "decision_id", "judge", "model", "prompt_version", "head", "tail", "keep", "remove",
           "rationale", "source", "error", "created_at")
DECISION_SCHEMA = pa.schema([
    ("key", pa.string()), ("decision_id", pa.string()), ("judge", pa.string()), ("model", pa.string()),
    ("prompt_version", pa.string()), ("head", pa.list_(pa.string())), ("tail", pa.list_(pa.string())),
    ("keep", pa.list_(pa.string())), ("remove", pa.list_(pa.string())), ("rationale", pa.string()),
    ("source", pa.string()), ("error", pa.string()), ("created_at", pa.timestamp("us", tz="UTC")),
])
_CREATE = """
CREATE TABLE IF NOT EXISTS decisions (
    key VARCHAR NOT NULL, decision_id VARCHAR PRIMARY KEY, judge VARCHAR, model VARCHAR,
    prompt_version VARCHAR, head VARCHAR[], tail VARCHAR[], keep VARCHAR[], remove VARCHAR[],
    rationale VARCHAR, source VARCHAR, error VARCHAR, created_at TIMESTAMPTZ)
"""


LOCK_WAIT_S = 30.0  # how long an open waits for another process's writer to close the cache


class DecisionCache:
    """Open with ``with DecisionCache(path) as cache:``; ``read_only`` for listing. While another
    process holds the file (DuckDB takes one writer), waits up to ``wait_s``, then refuses."""

    def __init__(self, path: str | Path, read_only: bool = False, wait_s: float = LOCK_WAIT_S):
        import duckdb  # (here: the augment batches, and the GPU script, import the planner without it)

        path = Path(path)
        if read_only and not path.exists():
            raise FileNotFoundError(f"no decision cache at {path} (run `tailforge plan` first)")
        path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                self.con = duckdb.connect(str(path), read_only=read_only)
                break
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower() or time.monotonic() >= deadline:
                    raise RuntimeError(f"the decision cache {path} is in use by another process "
                                       f"(DuckDB takes one writer; waited {wait_s:.0f} s): {exc}") from exc
                time.sleep(0.25)
        if not read_only:
            self.con.execute(_CREATE)

    def __enter__(self) -> "DecisionCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.con.close()

    def lookup(self, keys: list[str]) -> dict[str, Decision]:
        """Cached non-fallback decisions for these keys."""
        if not keys:
            return {}
        rows = self.con.execute(
            f"SELECT {', '.join(COLUMNS)} FROM decisions WHERE source <> 'fallback' AND list_contains(?, key)",
            [keys]).fetchall()
        return {row[0]: _decision(row) for row in rows}

    def store(self, decisions: list[Decision]) -> None:
        if decisions:
            table = pa.Table.from_pylist([d.to_row() for d in decisions], schema=DECISION_SCHEMA)
            self.con.register("incoming", table)
            self.con.execute(f"INSERT OR IGNORE INTO decisions SELECT {', '.join(COLUMNS)} FROM incoming")
            self.con.unregister("incoming")

    def all(self) -> list[Decision]:
        rows = self.con.execute(f"SELECT {', '.join(COLUMNS)} FROM decisions ORDER BY created_at, decision_id").fetchall()
        return [_decision(r) for r in rows]


def _decision(row: tuple) -> Decision:
    values = dict(zip(COLUMNS, row))
    for name in ("head", "tail", "keep", "remove"):
        values[name] = tuple(values[name] or ())
    return Decision(**values)


def export_decisions(decisions: list[Decision], folder_uri: str) -> str | None:
    """Write decisions as one content-named Parquet shard under ``folder_uri``."""
    if not decisions:
        return None
    unique = {d.decision_id: d for d in decisions}
    table = pa.Table.from_pylist([d.to_row() for d in unique.values()], schema=DECISION_SCHEMA)
    uri, _ = store.write_shard(folder_uri, table, "decision_id")
    return uri
