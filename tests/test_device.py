"""Where the models compute (models/device.py): $TAILFORGE_DEVICE, auto by default, and clear
errors for a device this host does not have. (The CUDA path itself runs on GPU hosts:
benchmarks/gpu_check.py.)"""

import pytest
import torch

from models.device import DEVICE_VARIABLE, describe_device, model_device, on_device, resolve_device


def test_auto_is_the_cpu_on_a_host_without_cuda_and_cuda_where_torch_sees_one(monkeypatch):
    monkeypatch.delenv(DEVICE_VARIABLE, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device() == torch.device("cpu") == resolve_device("auto")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device() == torch.device("cuda")
    monkeypatch.setenv(DEVICE_VARIABLE, " CPU ")
    assert resolve_device() == torch.device("cpu")  # the host's setting wins over auto


def test_a_device_this_host_lacks_or_torch_does_not_know_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv(DEVICE_VARIABLE, "cuda")
    with pytest.raises(ValueError, match=f"{DEVICE_VARIABLE}='cuda' but torch sees no CUDA device.*cpu or auto"):
        resolve_device()
    for bad, why in (("gpu0", "is not a device"), ("mps", "runs on cpu or cuda")):
        with pytest.raises(ValueError, match=why):
            resolve_device(bad)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match="has 1 CUDA device"):
        resolve_device("cuda:1")


def test_models_move_to_the_resolved_device_and_say_where_they_are(monkeypatch):
    monkeypatch.setenv(DEVICE_VARIABLE, "cpu")
    model = on_device(torch.nn.Linear(2, 2))
    assert model_device(model) == torch.device("cpu") and describe_device(model_device(model)) == "cpu"
    assert model_device(torch.nn.ReLU()) == torch.device("cpu")  # no parameters: the CPU


def test_the_gpu_script_runs_end_to_end_on_the_cpu_at_tiny_sizes(tmp_path):
    """The one prepared GPU script (a lease is short: it must not fail there on a typo): its CPU
    dry run writes every section; the figures themselves mean nothing here."""
    from benchmarks import gpu_check
    from models.configs import CLASSIFIER_PRESETS

    result = gpu_check.main(["--cpu-smoke", "--sizes", "32", "--preset-sizes", "32", "--presets", "tiny",
                             "--classifier-sizes", "32", "--commit", "0000000", "--out", str(tmp_path)])
    assert result["agreement"]["ok"] and result["agreement"]["changed_outside_masks_cpu"] == 0
    assert result["throughput"][0]["inpaint_engine_img_s"] > 0
    assert [row["preset"] for row in result["classifier_presets"]] == list(CLASSIFIER_PRESETS)
    report = (tmp_path / "gpu_check.md").read_text()
    assert "inpaint, engine" in report and "densenet121" in report and "Commit `0000000`" in report
