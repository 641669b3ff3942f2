"""What a user adds registers in one place: a judge in ``tasks.knowledge.JUDGES``, a map
(mask) method in ``models.cam.MAP_MAKERS``, a real source in ``tasks.sources.READERS``. The
settings' validation, the JSON Schema and the CLI read the registry: each test adds one entry,
as a contributor's module would, and sees every reader take it."""

import numpy as np
import torch

from flows.cli_parser import build_parser
from flows.settings import settings_from_dict
from flows.settings_reference import schema


def _enum(section: str, name: str) -> list:
    tree = schema()
    section = tree["properties"][section]["$ref"].rsplit("/", 1)[1]
    node = tree["$defs"][section]["properties"][name]
    return node.get("enum") or next(part["enum"] for part in node["anyOf"] if "enum" in part)


def test_a_new_judge_is_one_registry_entry(monkeypatch):
    from tasks import knowledge
    from tasks.knowledge.rules import NoGuidanceJudge

    class KeepNothing(NoGuidanceJudge):  # a judge module would define it
        name = "keep-nothing"

    monkeypatch.setitem(knowledge.JUDGES, "keep-nothing", lambda llm: KeepNothing())
    settings = settings_from_dict({"knowledge": {"judge": "keep-nothing"}})
    assert isinstance(settings.knowledge.make_judge(), KeepNothing)
    assert build_parser().parse_args(["plan", "data", "--judge", "keep-nothing"]).judge == "keep-nothing"
    assert "keep-nothing" in _enum("knowledge", "judge")


def test_a_new_map_method_is_one_registry_entry(monkeypatch):
    from models import cam

    def centre(model, images, classes, config):  # a map method's module would define it
        maps = np.zeros((len(classes), *images.shape[-2:]), np.float32)
        maps[:, images.shape[-2] // 2, images.shape[-1] // 2] = 1.0
        return maps

    monkeypatch.setitem(cam.MAP_MAKERS, "centre", centre)
    assert settings_from_dict({"augment": {"cam_method": "centre"}})
    maps = cam.raw_maps(torch.nn.Identity(), torch.zeros(2, 1, 8, 8), [0, 1], cam.LocaliseConfig(), "centre")
    assert maps.shape == (2, 8, 8) and maps[:, 4, 4].tolist() == [1.0, 1.0]
    assert "centre" in _enum("augment", "cam_method")


def test_a_new_source_is_one_registry_entry(monkeypatch, tmp_path):
    from tasks import sources

    def read_listing(table: str, vocab: str = "nih"):  # a reader of another table format would go here
        return sources.read_folder(table, vocab)

    monkeypatch.setitem(sources.READERS, "listing", sources.Source(read_listing, ("vocab",), "a listing CSV"))
    table = tmp_path / "listing.csv"
    table.write_text("Image Index,Finding Labels\na.png,Effusion\nb.png,No Finding\n")
    settings = settings_from_dict({"dataset": {"source": "listing", "table": str(table), "images": str(tmp_path)}})
    assert sources.options_of(settings.dataset) == {"vocab": "nih"}
    args = build_parser().parse_args(["ingest", "listing", str(table), str(tmp_path), "--vocab", "chexpert"])
    assert (args.kind, args.vocab) == ("listing", "chexpert")
    read = sources.read_source("listing", str(table), **sources.options_of(settings.dataset))
    assert [r.path for r in read.records] == ["a.png", "b.png"]
    assert "listing" in _enum("dataset", "source")
