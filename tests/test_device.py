"""Where the models compute (models/device.py): $TAILFORGE_DEVICE, auto by default, and clear
errors for a device this host does not have. (The CUDA path itself runs on GPU hosts:
benchmarks/gpu_check.py.)"""

import json

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
    rates = result["throughput"][0]
    assert all(rates[f"inpaint_{name}_img_s"] > 0 for name in ("engine", "apart", "pooled"))
    assert [row["preset"] for row in result["classifier_presets"]] == list(CLASSIFIER_PRESETS)
    report = (tmp_path / "gpu_check.md").read_text()
    assert "inpaint, engine" in report and "the 4 at once" in report and "densenet121" in report
    assert "Commit `0000000`" in report


def phantom_groups(n: int = 96):
    """Packable groups from the phantom: its normals at 128 px stand in for the normal films, its
    films at 64 px (with their labels) for nih1000's."""
    from benchmarks.gpu_check import films

    images, labels = films(n, 128, seed=5)
    normals = images[(labels == 0).all(dim=1)]
    small = torch.nn.functional.interpolate(images, size=64, mode="area")
    return {"normals_train": (normals[:12], None), "normals_test": (normals[12:20], None),
            "nih_train": (small[:64], labels[:64].float()), "nih_val": (small[64:80], labels[64:80].float()),
            "nih_test": (small[80:], labels[80:].float())}


def test_the_generator_pack_takes_the_best_quality_that_fits_and_says_what_to_do_when_none_does(tmp_path):
    from benchmarks.gpu_generator import QUALITIES, load_pack, pack

    groups = phantom_groups()
    best = pack(groups, [f"f{k}" for k in range(14)], tmp_path / "a" / "pack.parquet", 2**30)
    assert best["quality"] == QUALITIES[0] and best["psnr_db"] > 35
    tighter = pack(groups, [f"f{k}" for k in range(14)], tmp_path / "b" / "pack.parquet", best["bytes"] - 1)
    assert tighter["quality"] < best["quality"] and tighter["bytes"] < best["bytes"]
    back, record = load_pack(tmp_path / "b")
    assert record == tighter and back["nih_test"][1].shape == groups["nih_test"][1].shape
    assert (back["normals_train"][0] - groups["normals_train"][0]).abs().mean() < 0.02  # lossy, but close
    with pytest.raises(SystemExit, match="carry fewer wheels"):
        pack(groups, [], tmp_path / "c" / "pack.parquet", 1000)


def test_the_generator_script_trains_scores_both_generators_and_judges_on_the_cpu(tmp_path):
    """The GPU script's second step dry-run: trains a tiny preset a few steps, scores it and the
    shipped generator alike, and says whether it wins and why not."""
    from benchmarks.gpu_generator import main, pack

    pack(phantom_groups(), [f"f{k}" for k in range(14)], tmp_path / "data" / "pack.parquet", 2**30)
    result = main(["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--cpu-smoke",
                   "--preset", "tiny", "--minutes", "0.01", "--max-steps", "4", "--batch", "4", "--commit", "0000000"])
    assert result["train"]["steps"] == 4 and result["shipped"]["path"] == "normal_dit_128.safetensors"
    for side in ("new", "shipped"):
        assert result[side]["fid_kid"]["free_samples_vs_held_out_normals"]["n"] == [16, 4]
        assert result[side]["removal"]["films"] == 2
    assert not result["wins"] and result["why_not"]  # four steps do not beat the shipped generator
    report = (tmp_path / "out" / "gpu_generator.md").read_text()
    assert "Does not win" in report and "Commit `0000000`" in report
    assert (tmp_path / "out" / "gpu_generator_grid.png").stat().st_size > 0
    assert not (tmp_path / "out" / "normal_dit_128.safetensors").exists() and result["written"] == []
    written = json.loads((tmp_path / "out" / "gpu_generator.json").read_text())
    assert written["new"]["removal"]["films"] == 2 and written["why_not"] == result["why_not"]


def test_a_winning_generator_leaves_with_its_card(tmp_path, monkeypatch):
    """The path a lease takes when the new generator wins: its weights (loadable, the trained
    config) and a card that names the pack's coding and the command."""
    from benchmarks import gpu_generator
    from models.dit import load_dit

    gpu_generator.pack(phantom_groups(), [f"f{k}" for k in range(14)], tmp_path / "data" / "pack.parquet", 2**30)
    monkeypatch.setattr(gpu_generator, "wins", lambda new, old: [])
    result = gpu_generator.main(["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"),
                                 "--cpu-smoke", "--minutes", "0.01", "--max-steps", "2", "--batch", "4"])
    assert result["wins"] and result["written"] == ["normal_dit_128.safetensors", "normal_dit_128.md"]
    _, config, _ = load_dit((tmp_path / "out" / "normal_dit_128.safetensors").read_bytes())
    assert config.depth == 6 and config.image_size == 128
    card = (tmp_path / "out" / "normal_dit_128.md").read_text()
    assert "WebP-coded at quality 95" in card and "--preset tiny --minutes 0.01" in card and "2 steps of batch 4" in card
    assert "**Wins**" in (tmp_path / "out" / "gpu_generator.md").read_text()


def test_a_generator_ships_only_when_it_wins_on_every_figure():
    from benchmarks.gpu_generator import wins

    def figures(fid, kid, ratio, drop=None, kept=None):
        out = {"fid_kid": {"free_samples_vs_held_out_normals": {"fid": fid, "kid": kid},
                           "held_out_normals_split_halves": {"fid": 3.1}}, "fidelity": {"ratio": ratio}}
        if drop is not None:
            out["removal"] = {"lesions": 10, "judge_drop_mean": drop, "judge_kept_change_mean": kept}
        return out

    shipped = figures(7.7, 0.009, 1.245, drop=0.10, kept=0.01)
    assert wins(figures(5.0, 0.005, 1.10, drop=0.09, kept=0.02), shipped) == []
    assert wins(figures(5.0, 0.005, 1.10), figures(7.7, 0.009, 1.245)) == []  # rescore: no removal scored
    for worse, what in ((figures(8.0, 0.005, 1.1, 0.1, 0.01), "FID"),
                        (figures(7.4, 0.005, 1.1, 0.1, 0.01), "FID"),  # lower, but within the noise margin
                        (figures(5.0, 0.01, 1.1, 0.1, 0.01), "KID"),
                        (figures(5.0, 0.005, 0.8, 0.1, 0.01), "NN ratio"),  # nearer the training films: copies
                        (figures(5.0, 0.005, 1.1, 0.05, 0.01), "judged removal"),
                        (figures(5.0, 0.005, 1.1, 0.1, 0.05), "kept findings")):
        reasons = wins(worse, shipped)
        assert len(reasons) == 1 and what in reasons[0], (what, reasons)
