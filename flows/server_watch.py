"""A Prefect server lost in the middle of a run ends the run in seconds, not minutes.

Prefect's client retries a request to a server that stopped answering with exponential back-off
(five retries, ~62 s per request), and the engine then reports the crash to the same dead server:
a killed server cost a factory run 312 s and 8 tracebacks before exit 1. ``ServerWatch`` asks the
server's ``/health`` every ``POLL_S``; when it has had no answer for ``LOST_AFTER_S`` it calls
``on_lost`` once. The CLI's ``on_lost`` prints one line naming the API URL, interrupts the main
thread (the run records end "interrupted", temp files are removed) and, when Prefect's own crash
reporting to the dead server keeps the process past ``GRACE_S``, ends it with exit 2. The next run
marks the dead flow runs Crashed on the server (tasks/runs.py, flows/crashes.py).

``LOST_AFTER_S`` outlasts a server restart on the same database (~10 s) so a restart is not a loss.
"""

from __future__ import annotations

import os
import threading
import time
import urllib.request
from typing import Callable

LOST_AFTER_S = 20.0
POLL_S = 2.0
GRACE_S = 10.0


def answers(api_url: str, timeout: float = 2.0) -> bool:
    """Whether the Prefect API at ``api_url`` answers its health check (with PREFECT_API_KEY, when
    set, for a server that needs one)."""
    request = urllib.request.Request(f"{api_url.rstrip('/')}/health")
    if os.environ.get("PREFECT_API_KEY"):
        request.add_header("Authorization", f"Bearer {os.environ['PREFECT_API_KEY']}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status == 200
    except (OSError, ValueError):
        return False


class ServerWatch:
    """A daemon thread that calls ``on_lost(seconds_silent)`` once when ``api_url`` has not answered
    for ``lost_after_s``; ``stop()`` (or leaving the ``with`` block) ends it."""

    def __init__(self, api_url: str, on_lost: Callable[[float], None], lost_after_s: float = LOST_AFTER_S,
                 poll_s: float = POLL_S) -> None:
        self.api_url, self.on_lost, self.lost_after_s, self.poll_s = api_url, on_lost, lost_after_s, poll_s
        self.lost = False
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="prefect-server-watch", daemon=True)

    def start(self) -> "ServerWatch":
        self._thread.start()
        return self

    def __enter__(self) -> "ServerWatch":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._stopped.set()

    def wait_stopped(self, timeout: float) -> bool:
        """True when ``stop()`` was called within ``timeout`` seconds."""
        return self._stopped.wait(timeout)

    def _watch(self) -> None:
        silent_since = None
        while not self._stopped.wait(self.poll_s):
            if answers(self.api_url, timeout=min(self.poll_s, 2.0)):
                silent_since = None
                continue
            silent_since = silent_since or time.monotonic()
            silent = time.monotonic() - silent_since
            if silent >= self.lost_after_s:
                self.lost = True
                self.on_lost(silent)
                return
