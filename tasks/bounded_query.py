"""One user query over the catalog in a child process with hard bounds (the fence's last layer).

DuckDB's ``memory_limit`` covers its buffer manager, not every allocation: a single
``repeat('x', 3000000000)`` built a 3 GB string past a 2 GB limit, and ``con.interrupt()`` is
only looked at between vectors, so a timeout of 5 s stopped after 24 s. Here the query runs in
a forked child whose address space is capped (``RLIMIT_AS``: what the process maps already,
plus the catalog's memory limit, plus ``HEADROOM``), and the parent kills the child when the
time limit has passed by ``GRACE_S``. The child opens its own catalog, so no DuckDB
connection crosses the fork. Linux only (/proc and fork); elsewhere the query runs in-process
with the catalog's own limits.
"""

from __future__ import annotations

import multiprocessing
import resource
import sys

from tasks.catalog import MEMORY_LIMIT, QueryRefused, open_catalog, query

GRACE_S = 2.0  # after the time limit, the catalog's own interrupt gets this long before the child is killed
HEADROOM = 512 * 2**20  # bytes above memory_limit for DuckDB's own structures and the result rows
UNITS = {"KB": 2**10, "MB": 2**20, "GB": 2**30, "TB": 2**40}


def size_bytes(text: str) -> int:
    """'2GB' -> 2147483648 (DuckDB's units: KB, MB, GB, TB; binary multiples here, the larger reading)."""
    number, unit = text.strip().upper()[:-2], text.strip().upper()[-2:]
    if unit not in UNITS or not number.replace(".", "", 1).isdigit():
        raise ValueError(f"memory limit {text!r}: give a number and KB, MB, GB or TB, e.g. 2GB")
    return int(float(number) * UNITS[unit])


def mapped_bytes() -> int:
    """This process's virtual size (VmSize), which an address-space cap counts from."""
    with open("/proc/self/status") as fh:
        line = next(line for line in fh if line.startswith("VmSize:"))
    return int(line.split()[1]) * 1024


def bounded_query(root: str, sql: str, limit: int | None, timeout_s: float | None,
                  memory_limit: str = MEMORY_LIMIT) -> tuple[list[str], list[tuple]]:
    """``tasks.catalog.query`` over ``root``, bounded in memory and wall time whatever it
    allocates; a query past either bound is ``QueryRefused`` saying which."""
    if not sys.platform.startswith("linux"):
        with open_catalog(root, timeout_s=timeout_s, memory_limit=memory_limit) as catalog:
            return query(catalog, sql, limit)
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_child, args=(send, root, sql, limit, timeout_s, memory_limit), daemon=True)
    child.start()
    send.close()
    try:
        if not receive.poll(timeout_s + GRACE_S if timeout_s else None):
            raise QueryRefused(f"query stopped after the {timeout_s:g} s time limit; narrow the query (WHERE, LIMIT) "
                               f"or give a longer --timeout")
        kind, payload = receive.recv()
    except EOFError:  # the child died without a word: the address-space cap, or a signal
        raise QueryRefused(f"query stopped: it needed more memory than the catalog allows ({memory_limit}); narrow "
                           f"it") from None
    finally:
        if child.is_alive():
            child.kill()
        child.join()
        receive.close()
    if kind == "error":
        raise payload
    return payload


def _child(send, root: str, sql: str, limit: int | None, timeout_s: float | None, memory_limit: str) -> None:
    cap = mapped_bytes() + size_bytes(memory_limit) + HEADROOM
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    try:
        with open_catalog(root, timeout_s=timeout_s, memory_limit=memory_limit) as catalog:
            result = ("ok", query(catalog, sql, limit))
    except MemoryError:
        result = ("error", QueryRefused(f"query needs more than the catalog's memory limit ({memory_limit}); "
                                        f"narrow it"))
    except Exception as exc:  # noqa: BLE001 (handed to the parent, which raises it as it was)
        result = ("error", exc)
    try:
        send.send(result)
    except Exception as exc:  # noqa: BLE001 (a result or error that does not pickle)
        send.send(("error", QueryRefused(f"query failed: {type(exc).__name__}: {exc}")))
    finally:
        send.close()
