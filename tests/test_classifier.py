"""Classifier builder (timm-style contract tests), checkpoints, losses, EMA and the training loop.

Everything runs on CPU at 32-64 px with tiny networks: the file takes seconds.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from models.checkpoint import checkpoint_id
from models.classifier import (PAPER_BACKBONES, ClassifierCard, ClassifierConfig, build_classifier, load_checkpoint,
                               save_checkpoint)
from models.losses import LOSSES, NEEDS_COUNTS, make_loss
from models.metrics import auroc
from models.training import EMA, TrainConfig, augment_batch, fit_classifier, predict_probs, seed_everything

K = 3
TINY_SWIN = {"embed_dim": 16, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 2, 2)}
SMALL_BACKBONES = [  # (backbone, image_size, model_kwargs)
    ("resnet18", 32, {}),
    ("efficientnet_b0", 32, {}),
    ("test_vit", 32, {}),
    ("test_convnext", 32, {}),
    ("swin_tiny_patch4_window7_224", 32, TINY_SWIN),
    ("swin_tiny_patch4_window7_224", 64, TINY_SWIN),
]
SMALL_IDS = [f"{b}-{s}px" for b, s, _ in SMALL_BACKBONES]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: the machine is shared


def _tiny(backbone="test_resnet", size=32, num_classes=K, **kwargs) -> tuple[torch.nn.Module, ClassifierConfig]:
    config = ClassifierConfig(backbone=backbone, num_classes=num_classes, image_size=size, **kwargs)
    return build_classifier(config), config


# --- builder contract ---------------------------------------------------------------------------

@pytest.mark.parametrize("backbone,size,kwargs", SMALL_BACKBONES, ids=SMALL_IDS)
def test_forward_shape_and_finite(backbone, size, kwargs):
    torch.manual_seed(0)
    model, _ = _tiny(backbone, size, model_kwargs=kwargs)
    out = model(torch.rand(2, 1, size, size))
    assert out.shape == (2, K)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("backbone,size,kwargs", SMALL_BACKBONES, ids=SMALL_IDS)
def test_backward_reaches_every_parameter(backbone, size, kwargs):
    torch.manual_seed(0)
    model, _ = _tiny(backbone, size, model_kwargs=kwargs)
    model(torch.rand(2, 1, size, size)).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    broken = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert missing == [] and broken == []


@pytest.mark.parametrize("alias", sorted(PAPER_BACKBONES))
def test_paper_backbones_build_one_channel_k_outputs(alias):
    """Each paper backbone at its smallest tested size (32 px; convnext needs >= 32)."""
    model, config = _tiny(alias, 32, num_classes=13)
    first_conv_in = [m.in_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)][0]
    assert first_conv_in == 1
    with torch.no_grad():
        out = model.eval()(torch.rand(2, 1, 32, 32))
    assert out.shape == (2, 13) and torch.isfinite(out).all()
    assert config.timm_name == PAPER_BACKBONES[alias]


def test_swin_small_runs_at_64px():
    model, _ = _tiny("swin_small", 64)
    with torch.no_grad():
        assert model.eval()(torch.rand(1, 1, 64, 64)).shape == (1, K)


def test_config_validation_says_what_is_wrong():
    with pytest.raises(ValueError, match="swin_small"):  # lists the aliases
        ClassifierConfig(backbone="resnet_51")
    with pytest.raises(ValueError, match="num_classes"):
        ClassifierConfig(backbone="resnet18", num_classes=0)
    with pytest.raises(ValueError, match=">= 32"):
        ClassifierConfig(backbone="convnext_base", image_size=16)
    with pytest.raises(ValueError, match="multiple of 16"):
        build_classifier(ClassifierConfig(backbone="test_vit", num_classes=2, image_size=40))
    with pytest.raises(ValueError, match="model_kwargs"):
        ClassifierConfig(backbone="resnet18", model_kwargs={"in_chans": 3})


# --- checkpoints --------------------------------------------------------------------------------

def _card(**overrides) -> ClassifierCard:
    values = dict(labels=["Effusion", "Hernia", "Mass"], head=["Effusion"], tail=["Hernia"],
                  thresholds=[0.4, 0.2, 0.5], train_shards_sha256=["ab" * 32], seed=7,
                  metrics={"val": {"macro_f1": np.float64(0.31), "n": np.int64(5), "missing": None}})
    values.update(overrides)
    return ClassifierCard(**values)


def test_checkpoint_round_trip():
    torch.manual_seed(0)
    model, config = _tiny("swin_tiny_patch4_window7_224", 32, drop_rate=0.1, model_kwargs=TINY_SWIN)
    data = save_checkpoint(model, config, _card())
    loaded, config2, card2 = load_checkpoint(data)
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), loaded.eval()(x))
    assert config2 == config and card2 == _card()
    assert card2.metrics["val"]["macro_f1"] == 0.31 and type(card2.metrics["val"]["n"]) is int
    assert checkpoint_id(data) == checkpoint_id(bytes(data)) and len(checkpoint_id(data)) == 64
    assert checkpoint_id(save_checkpoint(model, config, _card())) == checkpoint_id(data)  # same inputs, same id
    torch.load(io.BytesIO(data), weights_only=True)  # plain contents only


def test_checkpoint_preconditions():
    model, config = _tiny()
    with pytest.raises(ValueError, match="3 classes"):
        save_checkpoint(model, config, _card(labels=["a", "b"], head=[], tail=[], thresholds=[]))
    with pytest.raises(ValueError, match="ndarray"):
        _card(metrics={"curve": np.zeros(3)})
    with pytest.raises(ValueError, match="both head and tail"):
        _card(tail=["Effusion"])
    assert _card(thresholds=[]).thresholds == [0.5, 0.5, 0.5]
    with pytest.raises(ValueError, match="not a tailforge"):
        buffer = io.BytesIO()
        torch.save({"state_dict": {}}, buffer)
        load_checkpoint(buffer.getvalue())


# --- losses -------------------------------------------------------------------------------------

def _logits_labels(seed=0, n=6, k=4):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, k, generator=g) * 3).requires_grad_()
    labels = (torch.rand(n, k, generator=g) < 0.4).float()
    labels[torch.rand(n, k, generator=g) < 0.3] = float("nan")
    return logits, labels


@pytest.mark.parametrize("name", sorted(set(LOSSES) - set(NEEDS_COUNTS)))  # per-column weights: own tests
def test_nan_labels_are_ignored(name):
    logits, labels = _logits_labels()
    known = ~torch.isnan(labels)
    loss_fn = make_loss(name)
    full = loss_fn(logits, labels)
    only_known = loss_fn(logits[known].view(1, -1), labels[known].view(1, -1))
    assert torch.allclose(full, only_known)
    full.backward()
    assert torch.isfinite(logits.grad).all() and (logits.grad[~known] == 0).all()


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_no_known_label_gives_zero_loss_that_backprops(name):
    logits = torch.randn(3, 2, requires_grad=True)
    loss = make_loss(name, **({"counts": [5, 1]} if name in NEEDS_COUNTS else {}))(logits, torch.full((3, 2), float("nan")))
    loss.backward()
    assert loss.item() == 0 and torch.equal(logits.grad, torch.zeros(3, 2))


def test_focal_and_asl_reduce_to_bce():
    logits, labels = _logits_labels(1)
    bce = make_loss("bce")(logits, labels)
    assert torch.allclose(make_loss("focal", gamma=0.0, alpha=None)(logits, labels), bce)
    assert torch.allclose(make_loss("asl", gamma_neg=0.0, gamma_pos=0.0, clip=0.0)(logits, labels), bce)
    assert not torch.allclose(make_loss("focal")(logits, labels), bce)  # defaults do differ


def test_class_balanced_loss_weighs_rare_classes_more_and_reduces_to_bce():
    """Cui et al.'s effective number: weight (1 - beta) / (1 - beta^n), scaled to sum to K."""
    logits, labels = _logits_labels(2)
    cb = make_loss("cb", counts=[1000, 100, 10, 1], beta=0.999)
    assert cb.weights.sum().item() == pytest.approx(4.0)
    assert (cb.weights[1:] > cb.weights[:-1]).all()  # the rarer, the heavier
    assert torch.allclose(make_loss("cb", counts=[1000, 100, 10, 1], beta=0.0)(logits, labels),
                          make_loss("bce")(logits, labels))  # beta 0: every class counts once
    assert torch.allclose(make_loss("cb", counts=[7, 7, 7, 7])(logits, labels), make_loss("bce")(logits, labels))
    with pytest.raises(ValueError, match="4 classes, but counts for 2"):
        make_loss("cb", counts=[3, 1])(logits, labels)
    # fit_classifier counts the positives of its training labels itself
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 4))
    images, y = torch.rand(12, 1, 4, 4), (torch.rand(12, 4) < 0.3).float()
    history = fit_classifier(model, images, y, TrainConfig(epochs=1, batch_size=6, loss="cb"))
    assert np.isfinite(history["train_loss"][0])


def test_losses_have_finite_gradients_at_extreme_logits():
    logits = torch.tensor([[40.0, -40.0, 0.0], [-40.0, 40.0, 1e-3]], requires_grad=True)
    labels = torch.tensor([[1.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    for loss_fn in (make_loss("focal", gamma=0.5), make_loss("asl", gamma_neg=0.5, gamma_pos=0.5), make_loss("bce")):
        logits.grad = None
        loss_fn(logits, labels).backward()
        assert torch.isfinite(logits.grad).all()


def test_make_loss_rejects_unknown_names_and_arguments():
    with pytest.raises(ValueError, match="asl"):
        make_loss("hinge")
    with pytest.raises(ValueError, match="focal"):
        make_loss("focal", gama=2)


# --- EMA ----------------------------------------------------------------------------------------

def test_ema_warmup_and_state():
    model = torch.nn.Linear(2, 1)
    ema = EMA(model, max_decay=0.999)
    assert ema.decay == pytest.approx(0.1)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)  # decay 0.1: the average moves 90% of the way
    assert ema.shadow["weight"].sub(1.0).abs().max() < 0.2
    for _ in range(9000):  # (1 + s) / (10 + s) reaches 0.999 at s = 8991
        ema.update(model)
    assert ema.decay == 0.999
    restored = EMA(torch.nn.Linear(2, 1))
    restored.load_state_dict(ema.state_dict())
    target = torch.nn.Linear(2, 1)
    restored.copy_to(target)
    assert restored.step == 9001 and torch.allclose(target.weight, torch.ones(1, 2))


# --- training -----------------------------------------------------------------------------------

def _squares(n: int, seed: int, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Class 0: a bright square top-left; class 1: one bottom-right; independent, p = 0.5 each."""
    g = torch.Generator().manual_seed(seed)
    labels = (torch.rand(n, 2, generator=g) < 0.5).float()
    images = torch.rand(n, 1, size, size, generator=g) * 0.3
    q = size // 4
    images[labels[:, 0] == 1, :, 2:2 + q, 2:2 + q] += 0.6
    images[labels[:, 1] == 1, :, -2 - q:-2, -2 - q:-2] += 0.6
    return images.clamp(0, 1), labels


def _fresh(**overrides) -> tuple[torch.nn.Module, TrainConfig]:
    """A seeded tiny 2-class network and a short training config."""
    seed_everything(0)
    model, _ = _tiny("test_resnet", 32, num_classes=2)
    config = TrainConfig(**{"epochs": 5, "batch_size": 16, "lr": 3e-3, "augment": True, **overrides})
    return model, config


def test_fit_learns_a_separable_problem_and_is_deterministic():
    images, labels = _squares(96, 0)
    labels[torch.rand(labels.shape, generator=torch.Generator().manual_seed(1)) < 0.15] = float("nan")
    val = _squares(64, 2)
    runs = []
    for _ in range(2):
        model, config = _fresh()
        rows = []
        history = fit_classifier(model, images, labels, config, val=val, progress=rows.append)
        runs.append((predict_probs(model, val[0], batch_size=32), history))
    probs, history = runs[0]
    assert np.array_equal(runs[0][0], runs[1][0])  # same seed, same predictions
    assert len(history["train_loss"]) == 5 and history["train_loss"][-1] < history["train_loss"][0]
    assert all(v is not None for v in history["val_loss"]) and len(rows) == 5
    scores = [auroc(probs[:, k], val[1][:, k].numpy()) for k in range(2)]
    assert min(scores) > 0.75, scores


def test_fit_takes_a_growing_training_set_per_epoch():
    base, base_labels = _squares(32, 0)
    extra, extra_labels = _squares(32, 3)
    seen = []

    def epoch_data(n):
        seen.append(n)
        share = 8 * n  # a growing prefix of the generated samples
        return torch.cat([base, extra[:share]]), torch.cat([base_labels, extra_labels[:share]])

    model, config = _fresh(epochs=3, augment=False, lr_schedule="constant")
    history = fit_classifier(model, None, None, config, epoch_data=epoch_data)
    assert seen == [0, 1, 2] and history["n_train"] == [32, 40, 48] and history["val_loss"] == [None] * 3


def test_fit_preconditions():
    model, config = _fresh(epochs=1)
    images, labels = _squares(8, 0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fit_classifier(model, images * 255, labels, config)
    with pytest.raises(ValueError, match="num_classes"):
        fit_classifier(model, images, torch.zeros(8, 5), config)
    with pytest.raises(ValueError, match="1, 0 or NaN"):
        fit_classifier(model, images, labels - 1, config)
    with pytest.raises(ValueError, match="hinge"):
        TrainConfig(1, loss="hinge")


def test_augmentation_keeps_range_and_never_mirrors():
    images, _ = _squares(4, 0)
    config = TrainConfig(1, max_shift=0.05, intensity_jitter=0.1)
    out = augment_batch(images, config, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1
    # a left-only bright bar stays on the left after augmentation
    bar = torch.zeros(2, 1, 32, 32)
    bar[..., :, 2:8] = 1.0
    moved = augment_batch(bar, config, torch.Generator().manual_seed(1))
    assert (moved[..., :, :16].mean() > 5 * moved[..., :, 16:].mean())
    still = augment_batch(images, TrainConfig(1, max_shift=0.0, intensity_jitter=0.0), torch.Generator())
    assert torch.allclose(still, images, atol=1e-6)


def test_predict_probs_restores_training_mode():
    model, _ = _tiny()
    model.train()
    probs = predict_probs(model, torch.rand(5, 1, 32, 32), batch_size=2)
    assert probs.shape == (5, K) and probs.dtype == np.float32 and model.training


def test_a_classifier_preset_names_its_backbone_and_refuses_a_second_choice():
    from flows.settings import settings_from_dict
    from models.configs import CLASSIFIER_PRESETS

    for name, backbone in CLASSIFIER_PRESETS.items():  # (each is built and timed by the GPU script's CPU run)
        assert ClassifierConfig(backbone, 14, 64).timm_name == backbone
        assert settings_from_dict({"classifier": {"preset": name}}).classifier.model_backbone() == backbone
    assert settings_from_dict({}).classifier.model_backbone() == "resnet18"
    with pytest.raises(ValueError, match="classifier.preset or classifier.backbone, not both"):
        settings_from_dict({"classifier": {"preset": "small", "backbone": "resnet50"}})
