"""DiT pretraining on several processes (tasks/distributed.py): torchrun, gloo, 2 CPU processes."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest
import torch

from models.dit import DiTConfig, DiTTrainConfig, train_dit
from tasks.distributed import DistributedFailed, train_dit_processes

TINY = DiTConfig(image_size=16, patch_size=4, depth=1, num_heads=2, head_dim=8)


def _films(n: int = 24) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    return torch.randint(0, 256, (n, 1, 16, 16), generator=generator).float() / 255


def test_two_processes_follow_one_process_on_the_same_global_batch(tmp_path, monkeypatch):
    monkeypatch.setenv("TAILFORGE_DEVICE", "cpu")
    train = DiTTrainConfig(steps=12, batch_size=8, warmup_steps=2)
    one_model, one_ema, one = train_dit(_films(), TINY, train, device=torch.device("cpu"))
    steps = []
    two_model, two_ema, two = train_dit_processes(2, _films(), TINY, train, tmp_path / "work",
                                                  progress=lambda step, loss: steps.append(step))
    # the same steps on the same rows, gradients averaged over the two halves: equal up to the
    # order of float sums (measured: largest loss difference ~1e-7)
    assert len(two["loss"]) == 12
    assert torch.allclose(torch.tensor(two["loss"]), torch.tensor(one["loss"]), rtol=1e-4, atol=1e-5)
    for name, value in one_model.state_dict().items():
        assert torch.allclose(two_model.state_dict()[name], value, rtol=1e-3, atol=1e-4), name
    assert steps and steps[-1] == 12
    assert not (tmp_path / "work").exists()  # the work folder goes once the result is read


def test_a_batch_that_does_not_split_over_the_processes_is_refused_before_any_launch(tmp_path):
    with pytest.raises(ValueError, match="does not split evenly over 2 processes"):
        train_dit_processes(2, _films(), TINY, DiTTrainConfig(steps=2, batch_size=7), tmp_path / "work")
    assert not (tmp_path / "work").exists()


def _kill_rank_one_after_first_save(work: Path, stop: threading.Event) -> None:
    while not stop.is_set():
        if (work / "state.json").exists() and (work / "rank-1.pid").exists():
            os.kill(int((work / "rank-1.pid").read_text()), signal.SIGKILL)
            return
        stop.wait(0.005)


def test_a_killed_rank_fails_with_one_message_and_the_next_launch_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("TAILFORGE_DEVICE", "cpu")
    train = DiTTrainConfig(steps=400, batch_size=8, warmup_steps=2)
    work, stop = tmp_path / "work", threading.Event()
    killer = threading.Thread(target=_kill_rank_one_after_first_save, args=(work, stop))
    killer.start()
    try:
        with pytest.raises(DistributedFailed) as failed:
            train_dit_processes(2, _films(), TINY, train, work, save_every=20)
    finally:
        stop.set()
        killer.join()
    message = str(failed.value)
    assert "rank 1 of 2 was killed (SIGKILL)" in message, message
    assert "run the stage again to resume" in message and "\n" not in message
    saved = int(message.split("saved at step ")[1].split()[0])
    assert 20 <= saved < 400 and saved % 20 == 0

    resumed: list[int] = []
    _, _, history = train_dit_processes(2, _films(), TINY, train, work, save_every=20,
                                        progress=lambda step, loss: resumed.append(step))
    assert resumed[0] == saved + 1  # no step before the saved state ran again
    one = train_dit(_films(), TINY, train, device=torch.device("cpu"))[2]
    assert len(history["loss"]) == 400
    assert torch.allclose(torch.tensor(history["loss"]), torch.tensor(one["loss"]), rtol=1e-3, atol=1e-4)


def test_the_pretrain_task_trains_on_processes_and_writes_one_checkpoint(tmp_path, monkeypatch):
    from tasks.ingest import ingest_phantom
    from tasks.pretrain import train_normal_dit

    monkeypatch.setenv("TAILFORGE_DEVICE", "cpu")
    dataset = str(tmp_path / "ph")
    ingest_phantom(dataset, 60, size=32, seed=1)
    config, train = DiTConfig(image_size=32, patch_size=8, depth=1, num_heads=2, head_dim=8), \
        DiTTrainConfig(steps=6, batch_size=8, warmup_steps=2)
    one = train_normal_dit([dataset], str(tmp_path / "one"), config, train)
    two = train_normal_dit([dataset], str(tmp_path / "two"), config, train, processes=2)
    assert torch.allclose(torch.tensor(two["loss"]), torch.tensor(one["loss"]), rtol=1e-4, atol=1e-5)
    assert Path(two["uri"]).exists() and two["uri"].startswith(str(tmp_path / "two"))
    assert not list((tmp_path / "two" / "training").iterdir())  # the work folder went with the result


def test_two_processes_train_the_classifier_as_one_does(tmp_path, monkeypatch):
    """Without BatchNorm a row's gradient does not depend on its batch-mates: then the two
    halves' averaged gradients are the one-process step's. (With it, each process normalises its
    own half on the CPU; on CUDA the statistics are synchronised.)"""
    from models.classifier import ClassifierConfig, build_classifier
    from models.training import TrainConfig, fit_classifier, seed_everything
    from tasks.distributed import fit_classifier_processes

    monkeypatch.setenv("TAILFORGE_DEVICE", "cpu")
    generator = torch.Generator().manual_seed(5)
    images = torch.randint(0, 256, (40, 1, 32, 32), generator=generator).float() / 255
    labels = (torch.rand(40, 3, generator=generator) > 0.6).float()
    train = TrainConfig(epochs=2, batch_size=8, lr=1e-3)
    seed_everything(0)
    start = build_classifier(ClassifierConfig("resnet18", 3, 32))
    for name, layer in list(start.named_modules()):  # no batch statistics: each row's gradient is its own
        if isinstance(layer, torch.nn.BatchNorm2d):
            parent, _, attr = name.rpartition(".")
            setattr(start.get_submodule(parent) if parent else start, attr, torch.nn.Identity())
    one, two = (start, __import__("copy").deepcopy(start))
    rows: list[dict] = []
    history_one = fit_classifier(one, images, labels, train)
    history_two = fit_classifier_processes(2, two, images, labels, train, tmp_path / "work", progress=rows.append)
    assert [row["epoch"] for row in rows] == [0, 1]
    assert history_two["train_loss"] == pytest.approx(history_one["train_loss"], rel=1e-4)
    for name, value in one.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(two.state_dict()[name], value, rtol=1e-3, atol=1e-4), name


def test_a_launcher_killed_with_sigkill_takes_what_it_launched_with_it(tmp_path):
    """No training group outlives the stage that started it (a rerun would start a second group on
    the same work folder): torchrun is started with a parent-death signal. (A group that prints
    dies of a broken pipe anyway; one in a long silent phase, a classifier epoch, would not.)
    Here the launched program is a silent ``sleep``."""
    import subprocess
    import sys
    import time

    script = ("import subprocess, sys, time\n"
              "from tasks.distributed import _stop_with_parent\n"
              "child = subprocess.Popen(['sleep', '300'], preexec_fn=_stop_with_parent)\n"
              "open(sys.argv[1], 'w').write(str(child.pid))\n"
              "time.sleep(300)\n")
    pid_file = tmp_path / "child.pid"
    launcher = subprocess.Popen([sys.executable, "-c", script, str(pid_file)], cwd=Path(__file__).resolve().parents[1])
    deadline = time.monotonic() + 60
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    child = int(pid_file.read_text())
    assert _alive(child)
    launcher.kill()
    launcher.wait()
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = _alive(child)
    if alive:
        os.kill(child, signal.SIGKILL)
    assert not alive


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:  # a zombie waiting for its parent is gone for our purpose
            return stat.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False
