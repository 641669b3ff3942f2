"""What a user adds is one module in its registry's package: a map (mask) method in models/maps/,
a judge in tasks/knowledge/judges/, a real source in tasks/readers/ (models/registry.py). The
settings' validation, the JSON Schema and the CLI read the registry: each test writes one such
module, as a contributor would, touches no other file, and sees every reader take it."""

import importlib
import sys
import textwrap

import pytest
import torch

from flows.cli_parser import build_parser
from flows.settings import settings_from_dict
from flows.settings_reference import schema
from models.registry import Registry


def _enum(section: str, name: str) -> list:
    tree = schema()
    section = tree["properties"][section]["$ref"].rsplit("/", 1)[1]
    node = tree["$defs"][section]["properties"][name]
    return node.get("enum") or next(part["enum"] for part in node["anyOf"] if "enum" in part)


@pytest.fixture
def add_module(monkeypatch, tmp_path):
    """Writes a module into a registry's package (a folder added to the package's path, so the
    checkout is not touched); the registry, its package and sys.modules are restored after."""
    added = []

    def add(registry: Registry, name: str, code: str) -> None:
        package = importlib.import_module(registry.package)
        folder = tmp_path / registry.package.replace(".", "_")
        folder.mkdir(exist_ok=True)
        (folder / f"{name}.py").write_text(textwrap.dedent(code))
        monkeypatch.setattr(package, "__path__", [*package.__path__, str(folder)])
        monkeypatch.setattr(registry, "_entries", dict(registry._entries))
        monkeypatch.setattr(registry, "_scanned", False)
        added.append(f"{registry.package}.{name}")

    yield add
    for module in added:
        sys.modules.pop(module, None)


def test_a_new_judge_is_one_module(add_module):
    from tasks import knowledge

    add_module(knowledge.JUDGES, "keep_nothing", """
        from dataclasses import dataclass

        from tasks.knowledge import JUDGES
        from tasks.knowledge.rules import NoGuidanceJudge

        @dataclass(frozen=True)
        class KeepNothing(NoGuidanceJudge):
            name: str = "keep-nothing"

        JUDGES.register("keep-nothing")(lambda llm: KeepNothing())
        """)
    settings = settings_from_dict({"knowledge": {"judge": "keep-nothing"}})
    assert type(settings.knowledge.make_judge()).__name__ == "KeepNothing"
    assert settings.knowledge.make_judge().name == "keep-nothing"
    assert build_parser().parse_args(["plan", "data", "--judge", "keep-nothing"]).judge == "keep-nothing"
    assert "keep-nothing" in _enum("knowledge", "judge")
    assert list(knowledge.JUDGES)[:3] == ["rules", "anthropic", "none"]  # the built-in ones first


def test_a_new_map_method_is_one_module(add_module):
    from models import cam

    add_module(cam.MAP_MAKERS, "centre", """
        import numpy as np

        from models.cam import MAP_MAKERS

        @MAP_MAKERS.register("centre")
        def centre(model, images, classes, config):
            maps = np.zeros((len(classes), *images.shape[-2:]), np.float32)
            maps[:, images.shape[-2] // 2, images.shape[-1] // 2] = 1.0
            return maps
        """)
    assert settings_from_dict({"augment": {"cam_method": "centre"}})
    maps = cam.raw_maps(torch.nn.Identity(), torch.zeros(2, 1, 8, 8), [0, 1], cam.LocaliseConfig(), "centre")
    assert maps.shape == (2, 8, 8) and maps[:, 4, 4].tolist() == [1.0, 1.0] and maps.sum() == 2
    assert "centre" in _enum("augment", "cam_method")


def test_a_new_source_is_one_module(add_module, tmp_path):
    from tasks import sources

    add_module(sources.READERS, "listing", """
        from tasks.sources import READERS, Source, read_folder

        def read_listing(table, vocab="nih"):  # a reader of another table format would go here
            return read_folder(table, vocab)

        READERS.register("listing")(Source(read_listing, ("vocab",), "a listing CSV"))
        """)
    table = tmp_path / "listing.csv"
    table.write_text("Image Index,Finding Labels\na.png,Effusion\nb.png,No Finding\n")
    settings = settings_from_dict({"dataset": {"source": "listing", "table": str(table), "images": str(tmp_path)}})
    assert sources.options_of(settings.dataset) == {"vocab": "nih"}
    args = build_parser().parse_args(["ingest", "listing", str(table), str(tmp_path), "--vocab", "chexpert"])
    assert (args.kind, args.vocab) == ("listing", "chexpert")
    read = sources.read_source("listing", str(table), **sources.options_of(settings.dataset))
    assert [r.path for r in read.records] == ["a.png", "b.png"]
    assert "listing" in _enum("dataset", "source")


def test_an_addition_that_fails_to_import_fails_every_read_naming_its_module(add_module):
    from models import cam

    add_module(cam.MAP_MAKERS, "broken", "import not_a_module_anywhere\n")
    for _ in range(2):  # not once, then silently without it
        with pytest.raises(ImportError, match="models.maps.broken .*failed to import: ModuleNotFoundError"):
            list(cam.MAP_MAKERS)


def test_a_name_registered_twice_is_refused():
    registry = Registry("models.maps", {"infill": object()})
    with pytest.raises(ValueError, match="'infill' is registered twice"):
        registry.register("infill")(object())


def test_without_additions_each_registry_holds_the_built_in_entries():
    from models.cam import MAP_MAKERS
    from tasks.knowledge import JUDGES
    from tasks.sources import READERS

    assert list(JUDGES) == ["rules", "anthropic", "none"]
    assert list(READERS) == ["nih", "chexpert", "mimic", "folder"]
    assert {"infill", "attention", "gradcam"} <= set(MAP_MAKERS)
