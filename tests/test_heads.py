"""TRCGL-Net's classifier parts (models/heads.py, issue 16): every option on each backbone family,
checkpoints, the classifier-retraining contract, class-attention maps and the label graph.

Tiny networks at 32-128 px on one core: the file takes seconds.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

import models  # noqa: F401  (torchvision guard before timm)
import timm
from models import cam
from models.cam import MAP_MAKERS, LocaliseConfig, raw_maps
from models.gradcam import cam_maps, default_target_layer, receptive_centre
from models.classifier import (PAPER_BACKBONES, ClassifierCard, ClassifierConfig, build_classifier, load_checkpoint,
                               save_checkpoint)
from models.heads import HeadedClassifier, class_attention_maps, cooccurrence, correlation_matrix

K = 3
NAN = float("nan")
TINY_SWIN = {"embed_dim": 16, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 2, 2)}
FAMILIES = [  # (backbone, model_kwargs): tiny members of the paper backbones' timm families
    ("test_resnet", {}), ("test_efficientnet", {}), ("test_convnext", {}), ("test_vit", {}),
    ("swin_tiny_patch4_window7_224", TINY_SWIN),
]
OPTIONS = {"se": {"se": True}, "attention": {"head": "attention"}, "gcn": {"gcn": True},
           "se+attention+gcn": {"se": True, "head": "attention", "gcn": True}}
COUNTS = cooccurrence(torch.tensor([[1.0, 1, 0], [1, 0, 1], [0, 1, 1], [1, 1, 1]]))  # (K, K)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: the machine is shared


def _build(backbone="test_resnet", kwargs=None, size=32, **options) -> tuple[torch.nn.Module, ClassifierConfig]:
    config = ClassifierConfig(backbone=backbone, num_classes=K, image_size=size, model_kwargs=kwargs or {}, **options)
    return build_classifier(config, COUNTS), config


def _card() -> ClassifierCard:
    return ClassifierCard(labels=["Effusion", "Hernia", "Mass"], head=["Effusion"], tail=["Hernia"])


def _logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


# --- every option on every family ---------------------------------------------------------------

@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("backbone,kwargs", FAMILIES, ids=[b for b, _ in FAMILIES])
def test_option_trains_and_its_checkpoint_gives_the_same_logits(backbone, kwargs, option):
    torch.manual_seed(0)
    model, config = _build(backbone, kwargs, **OPTIONS[option])
    assert isinstance(model, HeadedClassifier)
    out = model(torch.rand(2, 1, 32, 32))
    assert out.shape == (2, K) and torch.isfinite(out).all()
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    broken = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert missing == [] and broken == []
    loaded, config2, _ = load_checkpoint(save_checkpoint(model, config, _card()))
    x = torch.rand(2, 1, 32, 32)
    assert config2 == config and torch.equal(_logits(model, x), _logits(loaded, x))


@pytest.mark.parametrize("alias", sorted(PAPER_BACKBONES))
def test_paper_backbones_build_with_every_part(alias):
    model, _ = _build(alias, se=True, head="attention", gcn=True)
    out = _logits(model, torch.rand(2, 1, 32, 32))
    assert out.shape == (2, K) and torch.isfinite(out).all()


def test_all_options_off_is_timms_network_and_checkpoints_from_before_the_options_load():
    model, config = _build()
    reference = timm.create_model("test_resnet", pretrained=False, in_chans=1, num_classes=K)
    assert type(model) is type(reference) and model.state_dict().keys() == reference.state_dict().keys()
    blob = torch.load(io.BytesIO(save_checkpoint(model, config, _card())), weights_only=True)
    for name in ("se", "head", "gcn"):
        del blob["config"][name]  # a config written before the options existed
    old = io.BytesIO()
    torch.save(blob, old)
    loaded, config2, _ = load_checkpoint(old.getvalue())
    x = torch.rand(2, 1, 32, 32)
    assert config2 == config and torch.equal(_logits(model, x), _logits(loaded, x))


def test_config_validation_says_what_is_wrong():
    with pytest.raises(ValueError, match="'linear', 'attention'"):
        ClassifierConfig(backbone="resnet18", head="mlp")
    with pytest.raises(ValueError, match="true or false"):
        ClassifierConfig(backbone="resnet18", se="yes")
    with pytest.raises(ValueError, match="co-occurrence"):
        build_classifier(ClassifierConfig(backbone="test_resnet", num_classes=K, image_size=32, gcn=True))
    with pytest.raises(ValueError, match=r"expected \(3, 3\)"):
        build_classifier(ClassifierConfig(backbone="test_resnet", num_classes=K, image_size=32, gcn=True),
                         torch.zeros(4, 4))


# --- the label graph ----------------------------------------------------------------------------

def test_cooccurrence_counts_positives_and_unknown_counts_as_absent():
    labels = torch.tensor([[1, 0, NAN, 0], [1, 1, 0, 0], [NAN, 1, 1, 0], [1, 1, 1, NAN]])
    assert torch.equal(cooccurrence(labels), torch.tensor([[3.0, 2, 1, 0], [2, 3, 2, 0], [1, 2, 2, 0], [0, 0, 0, 0]]))


def test_correlation_matrix_is_ml_gcns_reweighted_and_normalised():
    """P(j|i) rows [1, 2/3, 1/3], [2/3, 1, 2/3], [1/2, 1, 1] binarised at 0.4; each class keeps 0.8
    and shares 0.2 among its neighbours; class 3, never positive, keeps 0.8, normalised to 1."""
    counts = torch.tensor([[3.0, 2, 1, 0], [2, 3, 2, 0], [1, 2, 2, 0], [0, 0, 0, 0]])
    expected = torch.tensor([[0.8, 0.2, 0, 0], [0.1, 0.8, 0.1, 0], [0.1, 0.1, 0.8, 0], [0, 0, 0, 1]])
    assert torch.allclose(correlation_matrix(counts), expected)


def test_gcn_checkpoint_restores_the_label_graph_it_was_trained_with():
    torch.manual_seed(0)
    model, config = _build(gcn=True)
    loaded, _, _ = load_checkpoint(save_checkpoint(model, config, _card()))  # built on a zeros placeholder
    assert torch.equal(loaded.head.graph.cooccurrence, COUNTS)
    x = torch.rand(2, 1, 32, 32)
    loaded.load_state_dict({**model.state_dict(), "head.graph.cooccurrence": torch.eye(K)})
    assert not torch.allclose(_logits(model, x), _logits(loaded, x))  # the graph shapes the class vectors


def test_pretraining_builds_the_graph_from_the_train_split(tmp_path):
    from tasks import store
    from tasks.ingest import ingest_phantom
    from tasks.pretrain import train_classifier
    from tasks.tensors import load_tensors
    from models.training import TrainConfig

    ingest_phantom(str(tmp_path / "ph"), 48, size=32, seed=2)
    handle = train_classifier(str(tmp_path / "ph"), str(tmp_path / "models"),
                              ClassifierConfig("test_resnet", 14, 32, gcn=True), TrainConfig(epochs=1))
    model, _, _ = load_checkpoint(store.read_bytes(handle["uri"]))
    train = cooccurrence(load_tensors(str(tmp_path / "ph"), splits=("train",)).labels)
    assert train.sum() > 0 and torch.equal(model.head.graph.cooccurrence, train)


# --- classifier re-training (cRT) contract ------------------------------------------------------

HEAD_SHAPES = {  # what get_classifier() holds, for C = 96 channels (test_resnet)
    "se": [(K, 96), (K,)],
    "attention": [(K, 96), (K, 96), (K,)],  # attention scores, class vectors, bias
    "gcn": [(256, K), (96, 256)],  # GCN layers (one-hot nodes -> hidden -> C)
    "se+attention+gcn": [(K, 96), (256, K), (96, 256)],
}


@pytest.mark.parametrize("option", list(OPTIONS))
def test_get_classifier_holds_the_classification_layers_and_retrains_alone(option):
    torch.manual_seed(0)
    model, _ = _build(**OPTIONS[option])
    head = model.get_classifier()
    assert sorted(tuple(p.shape) for p in head.parameters()) == sorted(HEAD_SHAPES[option])
    rest = {id(p) for p in model.backbone.parameters()} | {id(p) for p in (model.se.parameters() if model.se else [])}
    assert {id(p) for p in model.parameters()} == rest | {id(p) for p in head.parameters()}
    assert not rest & {id(p) for p in head.parameters()}
    # cRT: freeze everything, re-initialise the classifier's Linear layers, train only them
    model.requires_grad_(False)
    before = [p.clone() for p in head.parameters()]
    for module in head.modules():
        if isinstance(module, torch.nn.Linear):
            module.reset_parameters()
    assert all(not torch.equal(a, b) for a, b in zip(before, head.parameters()))
    head.requires_grad_(True)
    model(torch.rand(2, 1, 32, 32)).square().mean().backward()
    assert all(p.grad is not None for p in head.parameters())
    assert all(p.grad is None for p in model.parameters() if id(p) in rest)


# --- class-attention maps -----------------------------------------------------------------------

@pytest.mark.parametrize("backbone,kwargs,grid", [("test_resnet", {}, (2, 2)), ("test_convnext", {}, (2, 2)),
                                                  ("test_vit", {}, (4, 4)), ("swin_tiny_patch4_window7_224", TINY_SWIN, (2, 2))],
                         ids=["resnet", "convnext", "vit", "swin"])
def test_attention_maps_are_where_the_logits_come_from(backbone, kwargs, grid):
    """logit k = sum over cells of map_k(cell) * (cell feature . w_k) + b_k."""
    torch.manual_seed(0)
    model, _ = _build(backbone, kwargs, size=64, se=True, head="attention")
    x = torch.rand(2, 1, 64, 64)
    model.train()
    maps = class_attention_maps(model, x)
    assert model.training and maps.shape == (2, K, *grid)
    assert torch.allclose(maps.sum((2, 3)), torch.ones(2, K))
    with torch.no_grad():
        cell_logits = model.eval().features(x).spatial @ model.head.fc.weight.T  # (N, h*w, K)
    expected = (maps.flatten(2) * cell_logits.transpose(1, 2)).sum(-1) + model.head.fc.bias
    assert torch.allclose(_logits(model, x), expected, atol=1e-5)


def test_attention_map_method_refuses_a_classifier_without_the_head():
    assert "attention" in MAP_MAKERS
    x = torch.rand(1, 1, 32, 32)
    for options in ({}, {"se": True}, {"gcn": True}):
        model, _ = _build(**options)
        with pytest.raises(ValueError, match="classifier.head: attention"):
            raw_maps(model, x, [0], LocaliseConfig(), "attention")


def test_attention_maps_are_placed_where_the_cells_look(monkeypatch):
    """Cell k of the final stage is placed at its measured receptive centre, offset + k * stride,
    as cam_maps places a layer's cells (a padded ResNet: near k * stride, not (k + 0.5) * stride)."""
    model, _ = _build(size=128, head="attention")
    x = torch.rand(2, 1, 128, 128)
    maps = raw_maps(model, x, [0, 2], LocaliseConfig(), "attention")
    assert maps.shape == (2, 128, 128) and maps.min() >= 0 and np.allclose(maps.max((1, 2)), 1)
    one_cell = torch.zeros(2, K, 4, 4)
    one_cell[:, :, 1, 2] = 1.0
    monkeypatch.setattr(cam, "class_attention_maps", lambda _model, _images: one_cell)
    peak = np.unravel_index(np.argmax(raw_maps(model, x, [0, 1], LocaliseConfig(), "attention")[0]), (128, 128))
    offset, stride = receptive_centre(model, model.backbone.layer4, 128)  # measured, as for Grad-CAM maps
    assert stride == 32 and abs(offset) < stride / 4  # nearer k * stride than (k + 0.5) * stride
    assert abs(peak[0] - (offset + 32)) <= 1 and abs(peak[1] - (offset + 64)) <= 1


@pytest.mark.parametrize("backbone,kwargs", [("test_resnet", {}), ("test_vit", {}),
                                             ("swin_tiny_patch4_window7_224", TINY_SWIN)], ids=["resnet", "vit", "swin"])
def test_grad_cam_finds_its_layers_in_the_wrapped_backbone(backbone, kwargs):
    torch.manual_seed(0)
    model, _ = _build(backbone, kwargs, size=64, se=True, head="attention", gcn=True)
    name, layer = default_target_layer(model, 64)
    assert layer is model.backbone.get_submodule(name)
    x = torch.rand(2, 1, 64, 64)
    maps = cam_maps(model, x, [0, 1])
    by_name = raw_maps(model, x, [0, 1], LocaliseConfig(layers=(name,)), "gradcam")
    assert maps.shape == (2, 64, 64) and np.isfinite(maps).all() and np.allclose(maps, by_name)


def test_the_pretrain_flow_passes_the_yaml_options_to_the_classifier(monkeypatch):
    from flows import pretrain as flow
    from flows.settings import ClassifierSettings

    seen = []

    def train_classifier(dataset_uri, models_uri, config, train, progress, processes):
        seen.append((config, processes))
        return {"id": "x", "uri": "m.pt", "metrics": {}}

    monkeypatch.setattr(flow, "StepProgress", lambda *a, **k: type("Quiet", (), {"epoch": None})())
    monkeypatch.setattr(flow.pretrain, "train_classifier", train_classifier)
    settings = ClassifierSettings(backbone="test_resnet", se=True, head="attention", gcn=True)
    flow.train_classifier_task.fn("data", "models", settings, K, 32)
    assert seen == [(ClassifierConfig("test_resnet", K, 32, se=True, head="attention", gcn=True), 1)]
