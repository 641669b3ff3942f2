"""Pretraining on several processes: ``torchrun`` (torch.distributed's elastic launcher)
starts one worker per process (one per GPU with NCCL; CPU processes with gloo), each runs the
product's trainer inside the process group (models/distributed.py): ``models.dit.train_dit``
for the DiT, ``models.training.fit_classifier`` for the classifier. For the DiT rank 0 saves
the training state every few hundred steps into a work folder. A rank that dies ends the
whole group (torchrun stops the others) and the launch fails with one message naming the
rank and how it died; launching the DiT again with the same work folder continues from the
last saved state, so no more than ``save_every`` steps are lost (the classifier, minutes where
the DiT takes hours, starts over).

    python -m tasks.distributed WORK_FOLDER   # what torchrun runs in each process
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path
from typing import Callable

import torch

from models import distributed
from models.device import resolve_device
from models.dit import DiTConfig, DiTTrainConfig, build_dit, train_dit
from models.training import EMA, TrainConfig, fit_classifier

PROGRESS = "tailforge-progress"  # rank 0's progress lines on the launcher's pipe
GROUP_TIMEOUT = timedelta(minutes=10)  # a collective that waits longer ends the group
SAVE_EVERY = 200  # steps between saved training states (what a killed rank can cost)
STOP_GRACE_S = 30  # torchrun's time to stop its ranks once told to
PR_SET_PDEATHSIG = 1  # prctl(2)


class DistributedFailed(RuntimeError):
    """A rank of the training group died or raised; the message says which and how to resume."""


def train_dit_processes(processes: int, images01: torch.Tensor, config: DiTConfig, train: DiTTrainConfig,
                        work: Path, labels: torch.Tensor | None = None,
                        progress: Callable[[int, float], None] | None = None,
                        save_every: int = SAVE_EVERY) -> tuple[torch.nn.Module, EMA, dict]:
    """``train_dit`` on ``processes`` processes launched by torchrun; returns what it returns
    (the model and EMA on the CPU). ``work`` (a local folder) holds the inputs and the saved
    state while it runs and is removed once the result is read; a failed launch leaves it, and
    the next launch with it resumes. Raises DistributedFailed when a rank dies."""
    _check(processes, train.batch_size, "generator.batch_size")
    _write_inputs(work, "dit", images01, labels, {"config": asdict(config), "train": asdict(train),
                                                  "save_every": save_every})
    result = _run(processes, work, "DiT training", lambda payload: progress and progress(*payload))
    model = build_dit(config)
    model.load_state_dict(result["model"])
    ema = EMA(model, max_decay=train.ema_decay)
    ema.load_state_dict(result["ema"])
    model.eval()
    return model, ema, result["history"]


def fit_classifier_processes(processes: int, model: torch.nn.Module, images01: torch.Tensor, labels: torch.Tensor,
                             train: TrainConfig, work: Path, val: tuple | None = None,
                             progress: Callable[[dict], None] | None = None) -> dict:
    """``fit_classifier`` on ``processes`` processes launched by torchrun, from ``model``'s
    weights (the whole module travels); the trained weights are loaded back into ``model``.
    Returns the history. Raises DistributedFailed when a rank dies."""
    _check(processes, train.batch_size, "classifier.batch_size")
    _write_inputs(work, "classifier", images01, labels, {"model": copy.deepcopy(model).cpu(), "train": train,
                                                          "val": val})
    result = _run(processes, work, "classifier training", lambda payload: progress and progress(payload))
    model.load_state_dict(result["model"])
    return result["history"]


def _check(processes: int, batch_size: int, setting: str) -> None:
    if processes < 1:
        raise ValueError(f"processes must be at least 1, got {processes}")
    if batch_size % processes:
        raise ValueError(f"a batch of {batch_size} does not split evenly over {processes} processes; use a "
                         f"{setting} that is a multiple of {processes}")


def _run(processes: int, work: Path, what: str, progress: Callable) -> dict:
    tail = _launch(processes, work, progress)
    if tail is not None:
        raise DistributedFailed(_failure(what, processes, work, tail))
    result = torch.load(work / "result.pt", map_location="cpu", weights_only=False)
    shutil.rmtree(work, ignore_errors=True)
    return result


def _write_inputs(work: Path, job: str, images01: torch.Tensor, labels: torch.Tensor | None, rest: dict) -> None:
    work.mkdir(parents=True, exist_ok=True)
    as_bytes = (images01 * 255).round().to(torch.uint8)
    lossless = torch.equal(as_bytes.float() / 255, images01.float())  # images decoded from 8-bit files
    _save(work / "inputs.pt", {"job": job, "images": as_bytes if lossless else images01, "labels": labels, **rest})


def _launch(processes: int, work: Path, progress: Callable | None) -> deque | None:
    """Run the group; None when every rank finished, else the last lines it printed."""
    threads = max(1, (os.cpu_count() or 1) // processes)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads))}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
               f"--nproc-per-node={processes}", "--max-restarts=0", "-m", "tasks.distributed", str(work)]
    tail: deque = deque(maxlen=80)
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                             cwd=Path(__file__).resolve().parents[1], preexec_fn=_stop_with_parent)
    try:
        for line in child.stdout:
            if line.startswith(PROGRESS):
                progress(json.loads(line[len(PROGRESS):]))
            else:
                tail.append(line.rstrip())
        child.wait()
    finally:  # this process stopped (Ctrl-C, a cancelled stage): so does the group, torchrun ending its ranks
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        child.stdout.close()
    return None if child.returncode == 0 else tail


def _stop_with_parent() -> None:
    """In the launched torchrun: SIGTERM when the launching process dies, even by SIGKILL (Linux's
    parent-death signal), so no training group outlives the stage that started it."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _failure(what: str, processes: int, work: Path, tail: deque) -> str:
    text = "\n".join(tail)
    deaths = [(int(rank), int(code)) for rank, code in
              re.findall(r"rank\s*:\s*(\d+)[^\n]*\n(?:[^\n]*\n)?\s*exitcode\s*:\s*(-?\d+)", text)]
    # torchrun stops the surviving ranks with SIGTERM: the rank that died first is another one
    killed = sorted(((r, c) for r, c in deaths if c < 0), key=lambda d: d[1] == -signal.SIGTERM)
    errors = [line.strip() for line in tail if re.match(r"\s*\w+(Error|Exception): ", line)]
    if killed:
        rank, code = killed[0]
        how = f"rank {rank} of {processes} was killed ({signal.Signals(-code).name})"
    elif errors:
        how = f"a rank raised {errors[-1]}"
    elif deaths:
        rank, code = deaths[0]
        how = f"rank {rank} of {processes} exited with status {code}"
    else:
        how = f"torchrun failed: {tail[-1] if tail else 'no output'}"
    step = _saved_step(work)
    where = (f"training state saved at step {step} in {work}: run the stage again to resume from it" if step
             else "no training state saved yet: running the stage again starts over")
    return f"{what} on {processes} processes failed: {how}; {where}"


def _saved_step(work: Path) -> int:
    try:
        return int(json.loads((work / "state.json").read_text())["step"])
    except (OSError, ValueError, KeyError):
        return 0


def _save(path: Path, obj) -> None:
    partial = path.with_name(path.name + f".{os.getpid()}.partial")
    torch.save(obj, partial)
    os.replace(partial, path)


def _worker(work: Path) -> None:
    """One rank: join the group, train its share, rank 0 saves the state and the result."""
    device = resolve_device()
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    torch.distributed.init_process_group(distributed.backend(device), timeout=GROUP_TIMEOUT)
    rank = torch.distributed.get_rank()
    (work / f"rank-{rank}.pid").write_text(str(os.getpid()))
    inputs = torch.load(work / "inputs.pt", map_location="cpu", weights_only=False)
    images = inputs["images"].float() / 255 if inputs["images"].dtype == torch.uint8 else inputs["images"]
    result = (_dit_job if inputs["job"] == "dit" else _classifier_job)(work, rank, inputs, images, device)
    if rank == 0:
        _save(work / "result.pt", result)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def _say(payload) -> None:
    print(f"{PROGRESS} {json.dumps(payload)}", flush=True)


def _dit_job(work: Path, rank: int, inputs: dict, images: torch.Tensor, device: torch.device) -> dict:
    state = work / "state.pt"
    resume = torch.load(state, map_location="cpu", weights_only=False) if state.exists() else None
    last = [0.0]

    def report(step: int, loss: torch.Tensor) -> None:
        if rank == 0 and (time.monotonic() - last[0] >= 1.0 or step == inputs["train"]["steps"]):
            last[0] = time.monotonic()
            _say([step, float(loss)])

    def save(training_state: dict) -> None:
        _save(state, training_state)
        (work / "state.json").write_text(json.dumps({"step": training_state["step"]}))

    model, ema, history = train_dit(images, DiTConfig(**inputs["config"]), DiTTrainConfig(**inputs["train"]),
                                    report, labels=inputs["labels"], device=device, resume=resume, save=save,
                                    save_every=inputs["save_every"])
    return {"model": {k: v.cpu() for k, v in model.state_dict().items()}, "ema": ema.state_dict(), "history": history}


def _classifier_job(work: Path, rank: int, inputs: dict, images: torch.Tensor, device: torch.device) -> dict:
    model = inputs["model"].to(device)
    history = fit_classifier(model, images, inputs["labels"], inputs["train"], val=inputs["val"],
                             progress=_say if rank == 0 else None)
    return {"model": {k: v.cpu() for k, v in model.state_dict().items()}, "history": history}


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
