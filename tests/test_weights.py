"""The shipped normal-X-ray generator (weights/): its file, its card, and when the product uses it."""

import re
from pathlib import Path

import pytest
import torch

from flows.pretrain import shipped_generator
from flows.settings import GeneratorSettings
from models.checkpoint import checkpoint_id, is_safetensors
from models.dit import DiTConfig, build_dit, build_scheduler, load_dit, predict_noise, save_dit, save_dit_safetensors
from models.sampling import sample
from tasks import pretrain

WEIGHTS = Path(__file__).resolve().parents[1] / "weights"


def test_a_safetensors_checkpoint_loads_like_the_torch_one():
    config = DiTConfig(image_size=16, patch_size=4, depth=1, num_heads=2, head_dim=8, prediction="sample")
    torch.manual_seed(0)
    model = build_dit(config).eval()
    data = save_dit_safetensors(model, config, {"steps": 3, "data": "x"})
    assert is_safetensors(data) and not is_safetensors(save_dit(model, config))
    loaded, found, extra = load_dit(data)
    assert found == config and extra == {"steps": 3, "data": "x"}
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([4, 60])
    with torch.no_grad():
        assert torch.equal(predict_noise(model, x, t), predict_noise(loaded, x, t))
    with pytest.raises(ValueError, match="not a tailforge.dit/1 checkpoint"):
        load_dit(__import__("safetensors.torch").torch.save({"w": torch.zeros(1)}, metadata={"format": "other"}))


@pytest.mark.parametrize("settings, size, real, chosen", [
    (GeneratorSettings(), 128, True, True),
    (GeneratorSettings(), 128, False, False),  # the phantom trains its own
    (GeneratorSettings(), 64, True, False),  # none in this folder at this size
    (GeneratorSettings(normals=("s3://b/normals",)), 128, True, False),  # a corpus named: train on it
    (GeneratorSettings(conditioning="labels"), 128, True, False),
    (GeneratorSettings(conditioning="mask"), 128, True, False),
    (GeneratorSettings(checkpoint="/m/dit.pt"), 128, True, False),
])
def test_the_shipped_generator_is_used_only_where_the_settings_leave_the_choice_open(
        settings, size, real, chosen, tmp_path, monkeypatch):
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "normal_dit_128.safetensors").write_bytes(b"x")
    monkeypatch.setenv("TAILFORGE_CHECKOUT", str(tmp_path))
    found = shipped_generator(settings, size, real)
    assert found == (str(tmp_path / "weights" / "normal_dit_128.safetensors") if chosen else None)


@pytest.mark.parametrize("size", [64, 128])
def test_the_shipped_weights_match_their_card_and_draw_films(size, monkeypatch):
    monkeypatch.delenv("TAILFORGE_CHECKOUT", raising=False)
    path = WEIGHTS / f"normal_dit_{size}.safetensors"
    data = path.read_bytes()
    assert len(data) <= 25e6 and is_safetensors(data)
    assert pretrain.shipped_dit(size) == str(path)
    card = (WEIGHTS / f"normal_dit_{size}.md").read_text()
    assert checkpoint_id(data) in card and re.search(r"\| free samples vs held-out normals \| [\d.]+ \|", card)
    model, config, extra = load_dit(data)
    assert config.image_size == size and config.prediction == "sample" and extra["steps"] >= 1000
    films = sample(model, build_scheduler(config), 2, size, steps=4, generator=torch.Generator().manual_seed(0))
    at = lambda *sides: slice(size * sides[0] // 128, size * sides[1] // 128)  # noqa: E731 (128 px coordinates)
    lungs, body = films[:, 0, at(40, 90), at(30, 50)].mean(), films[:, 0, at(100, 120), at(50, 78)].mean()
    assert films.std() > 0.1 and lungs < body  # a film, not flat grey: dark lungs above a brighter abdomen
