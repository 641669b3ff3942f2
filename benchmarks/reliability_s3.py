"""The S3-outage section of benchmarks/reliability.py (issue 12): the storage endpoint goes away
in the middle of `tailforge ingest nih` and of `tailforge augment` writing to s3://.

The writers talk to a moto S3 server through a TCP gate that the suite closes once some shards
exist: ``refused`` closes the listener and the open connections (the endpoint is down: new
connections are refused), ``reset`` resets every open connection mid-request (RST) and then
refuses. Killing moto itself would also drop its in-memory buckets, which says nothing about
the writer; the gate keeps the data so the suite can check it. Each writer must end by itself
within the bound with status 2 and one line naming the endpoint (`ingest`: the only line, no
traceback; `augment`: the last line, after Prefect's run log of the failed task); once the gate
opens again, the same command must finish, and the dataset must equal an uninterrupted run's:
no row lost or changed, none duplicated, no lease or temporary object left.
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from pathlib import Path

from benchmarks.reliability_sections import add, cli, finish, plain_table, start_cli, tally, writer_commands

OUTAGE_BOUND_S = 150.0  # a writer cut off from S3 must have stopped by itself within this
MODES = ("refused", "reset")


def _bind_below_ephemeral(listener: socket.socket) -> None:
    """Bind ``listener`` on 127.0.0.1 to a free port below the ephemeral range (from the kernel's
    ``ip_local_port_range``; 32768 where it cannot be read)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for port in random.Random().sample(range(max(1024, low - 8000), low), 200):
        try:
            listener.bind(("127.0.0.1", port))
            return
        except OSError:
            continue
    raise OSError("no free port below the ephemeral range for the S3 gate")


class Gate:
    """A TCP proxy on 127.0.0.1 in front of ``upstream`` that can be closed and opened again on
    the same port."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream, self.port = upstream, 0
        self.listener: socket.socket | None = None
        self.open_sockets: set[socket.socket] = set()
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def open(self) -> None:
        """Listen again on the gate's port. The port lies below the kernel's ephemeral range, so
        while the gate is closed no outgoing connection can be given it (one was, once: the
        reopen failed with EADDRINUSE)."""
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.port:
            listener.bind(("127.0.0.1", self.port))
        else:
            _bind_below_ephemeral(listener)
        listener.listen(64)
        self.port, self.listener = listener.getsockname()[1], listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def close(self, reset: bool) -> None:
        """Stop accepting, and end every open connection (FIN, or RST when ``reset``)."""
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept thread: only then is the port free
        except OSError:
            pass
        self.listener.close()
        with self.lock:
            sockets, self.open_sockets = list(self.open_sockets), set()
        for sock in sockets:
            try:
                if reset:
                    # linger 0: the last close sends RST. SHUT_RD first wakes the pump thread blocked in
                    # recv on it; a close alone leaves that recv holding the socket open, and the
                    # writer then hangs on a connection nobody answers instead of seeing a reset
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    sock.shutdown(socket.SHUT_RD)
                else:
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            except OSError:
                pass

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed
            try:
                server = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.open_sockets.update((client, server))
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                try:
                    sock.close()
                except OSError:
                    pass


def _objects(client, bucket: str, prefix: str) -> list[str]:
    keys, token = [], None
    while True:
        page = client.list_objects_v2(Bucket=bucket, Prefix=prefix, **({"ContinuationToken": token} if token else {}))
        keys += [o["Key"] for o in page.get("Contents", [])]
        if not page.get("IsTruncated"):
            return keys
        token = page["NextContinuationToken"]


def _shard_count(client, bucket: str, prefix: str) -> int:
    return sum(1 for k in _objects(client, bucket, prefix) if "/samples/part-" in k or "/quarantine/part-" in k)


def outage_trial(command: list[str], env: dict, gate: Gate, mode: str, after_shards: int, client, bucket: str,
                 prefix: str) -> dict:
    """Run ``command`` through the gate, close it once ``after_shards`` shards exist, wait for the
    writer to stop, open the gate, run the command again."""
    child = start_cli(command, env)
    started = time.monotonic()
    while child.poll() is None and _shard_count(client, bucket, prefix) < after_shards:
        time.sleep(0.02)
    finished_first = child.poll() is not None
    gate.close(reset=mode == "reset")
    cut = time.monotonic()
    stopped = finish(child, OUTAGE_BOUND_S)
    rc, err = stopped["rc"], stopped["err"]
    stopped_after = round(time.monotonic() - cut, 1)
    gate.open()
    lines = err.strip().splitlines()
    rerun = cli(command, env=env)
    return {"mode": mode, "after_shards": after_shards, "cut_after_s": round(cut - started, 2),
            "finished_before_cut": finished_first, "rc": rc, "stopped_after_s": stopped_after,
            "one_line": len(lines) == 1 and "Traceback" not in err,
            "names_endpoint": bool(lines) and f"cannot reach the storage endpoint {gate.url} " in lines[-1],
            "message": (lines[-1][:240] if lines else ""), "stderr_lines": len(lines), "rerun_rc": rerun["rc"], "rerun_s": rerun["seconds"],
            "rerun_error": rerun["err"].strip().splitlines()[-1:] if rerun["rc"] else [],
            "stack": lines[-60:] if rc is None else []}  # a writer that did not stop: where it waited


def section_s3_outage(args, work: Path) -> dict:
    """Ingest and augment to s3:// through the gate, cut mid-write in each mode."""
    import boto3
    from moto.server import ThreadedMotoServer

    from benchmarks.reliability_augment import augment_command, outputs, prepare
    from benchmarks.reliability_sections import dataset_rows

    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    direct = f"http://{host}:{port}"
    credentials = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                   "AWS_DEFAULT_REGION": "us-east-1"}
    os.environ.update({**credentials, "TAILFORGE_S3_ENDPOINT_URL": direct})  # this process reads past the gate
    client = boto3.client("s3", endpoint_url=direct, region_name="us-east-1")
    bucket = "outage"
    client.create_bucket(Bucket=bucket)
    gate = Gate((host, port))
    gate.open()
    try:
        table, images = plain_table(work, args.n)
        world = prepare(args, work)
        ingest = writer_commands(args, table, images)["ingest"]
        kinds = {"ingest": (lambda out: ingest(out), lambda out: dataset_rows(out)[1], args.n // args.shard_rows),
                 "augment": (lambda out: augment_command(world, out), outputs, None)}
        total, trials = tally(), []
        for kind, (command, rows_of, shards) in kinds.items():
            env = {**world["env"], **credentials, "TAILFORGE_S3_ENDPOINT_URL": gate.url}
            reference_uri = f"s3://{bucket}/{kind}-reference"
            done = cli(command(reference_uri), env={**env, "TAILFORGE_S3_ENDPOINT_URL": direct})
            if done["rc"] != 0:
                raise RuntimeError(f"the uninterrupted {kind} failed: {done['err'][-800:]}")
            reference = rows_of(reference_uri)
            shards = shards or _shard_count(client, bucket, f"{kind}-reference/")
            for k in range(args.outages):
                mode = MODES[k % len(MODES)]
                after = 1 + (k * max(1, shards - 1)) // max(1, args.outages)
                prefix = f"{kind}-{k}"
                trial = {"kind": kind, **outage_trial(command(f"s3://{bucket}/{prefix}"), env, gate, mode, after,
                                                      client, bucket, f"{prefix}/")}
                got = rows_of(f"s3://{bucket}/{prefix}")
                keys = _objects(client, bucket, f"{prefix}/")
                trial.update(rows=len(got), lost=len(set(reference) - set(got)) + sum(
                    1 for key, value in reference.items() if key in got and got[key] != value),
                    unexpected=len(set(got) - set(reference)),
                    duplicated=_stored_rows(kind, f"s3://{bucket}/{prefix}") - len(got),
                    leftovers=sum(".tmp-" in key or key.endswith(".tailforge.lease") for key in keys))
                # a flow command's terminal also shows Prefect's run log (the failed task's traceback,
                # as the UI does): for augment the error must be the last line; for ingest the only one
                clean_stop = trial["rc"] == 2 and trial["names_endpoint"] and (kind == "augment" or trial["one_line"])
                ok = (clean_stop or trial["finished_before_cut"]) and trial["rerun_rc"] == 0 and not (
                    trial["lost"] or trial["duplicated"] or trial["unexpected"] or trial["leftovers"])
                add(total, tally(trials=1, survived=ok, lost=trial["lost"], duplicated=trial["duplicated"],
                                 crashes=(trial["rc"] not in (0, 2, None) or not (clean_stop or trial["rc"] == 0))
                                 + (trial["rerun_rc"] not in (0, None)),
                                 hangs=(trial["rc"] is None) + (trial["rerun_rc"] is None),
                                 leaks=trial["leftovers"]))
                trials.append(trial)
    finally:
        gate.close(reset=True)
        moto.stop()
    return {**total, "bound_s": OUTAGE_BOUND_S, "details": trials}


def _stored_rows(kind: str, uri: str) -> int:
    """Rows as stored, duplicates included (samples, plus quarantine rows for augment)."""
    from benchmarks.reliability_augment import row_count
    from tasks.dataset import existing_rows

    if kind == "augment":
        return row_count(uri)
    table = existing_rows(uri, ["sample_id"])
    return 0 if table is None else table.num_rows
