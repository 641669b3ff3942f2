"""Progress of a long step (classifier training, DiT training, each fine-tune): a log line with
how far it is, its rate, ETA and latest loss, at most every ``every_s`` seconds (10) and at the end,
on the terminal and in the Prefect UI's logs, plus a progress artifact (long steps
printed nothing). The model code calls it through its ``progress`` callback."""

from __future__ import annotations

import time

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact


def eta_text(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


class StepProgress:
    def __init__(self, label: str, total: int, unit: str, key: str, every_s: float = 10.0):
        self.label, self.total, self.unit, self.every_s = label, max(1, total), unit, every_s
        self.started = self.last = time.monotonic()
        self.logger = get_run_logger()
        self.key, self.artifact = key, None  # made at the first report: a reused model's step shows none

    def line(self, done: int, loss: float | None) -> str:
        elapsed = time.monotonic() - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        left = (self.total - done) / rate if rate > 0 else float("nan")
        text = f"{self.label}: {self.unit} {done}/{self.total}, {rate:.2f} {self.unit}s/s"
        if done < self.total and rate > 0:
            text += f", ETA {eta_text(left)}"
        return text + (f", loss {loss:.4f}" if loss is not None else "")

    def update(self, done: int, loss: float | None = None) -> None:
        now = time.monotonic()
        if done < self.total and now - self.last < self.every_s:
            return
        self.last = now
        self.logger.info(self.line(done, loss))
        share = 100.0 * min(done, self.total) / self.total
        if self.artifact is None:
            self.artifact = create_progress_artifact(share, key=self.key, description=f"{self.label}: {self.unit}s done (%)")
        else:
            update_progress_artifact(self.artifact, share)

    def epoch(self, row: dict) -> None:
        """models.training.fit_classifier's callback: one history row per epoch (from 0)."""
        self.update(int(row["epoch"]) + 1, row.get("train_loss"))

    def step(self, step: int, loss: float) -> None:
        """models.dit.train_dit's callback: the step (from 1) and its loss."""
        self.update(step, loss)


def counted(label: str, key: str, every_s: float = 10.0):
    """A ``progress(done, total)`` callback (ingest's) that reports through a StepProgress made
    at the first call, when the total is known."""
    holder: list[StepProgress] = []

    def progress(done: int, total: int) -> None:
        if not holder:
            holder.append(StepProgress(label, total, "image", key=key, every_s=every_s))
        holder[0].update(done)

    return progress
