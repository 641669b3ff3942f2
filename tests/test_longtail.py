"""The long-tail baselines a synthetic-data gain must beat (issue 16): LDAM-DRW and classifier
re-training (cRT) with class-aware sampling, as fine-tune options."""

import pytest
import torch
import torch.nn.functional as F

from models.classifier import ClassifierConfig, build_classifier
from models.losses import LDAMDRW, class_balanced_weights, make_loss
from models.training import TrainConfig, class_aware_order, fit_classifier, retrain_classifier
from tasks import finetune as work
from tests.test_finetune_empty import empty_run  # noqa: F401 (the module fixture: a phantom and a classifier)

COUNTS = [1000, 100, 10, 1]


def test_ldam_margins_grow_as_a_class_gets_rarer_and_only_positives_pay_them():
    loss = LDAMDRW(COUNTS, max_margin=0.5, drw_share=1.0)
    margins = loss.margins.tolist()
    assert margins[-1] == pytest.approx(0.5) and margins == sorted(margins)
    assert margins[0] == pytest.approx(0.5 * 1000 ** -0.25)  # C / n^(1/4), C so that the rarest gets 0.5
    logits = torch.randn(6, 4)
    labels = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 1], [1, 1, 0, 0], [0, 0, 0, 1], [1, 0, 0, 0], [0, 0, 1, 1.]])
    expected = F.binary_cross_entropy_with_logits(logits - labels * loss.margins, labels)
    assert torch.allclose(loss(logits, labels), expected)
    assert torch.allclose(LDAMDRW(COUNTS, max_margin=0.0, drw_share=1.0)(logits, labels),
                          make_loss("bce")(logits, labels))  # no margin, no re-weighting: plain BCE
    negatives = torch.zeros(6, 4)
    assert torch.allclose(loss(logits, negatives), make_loss("bce")(logits, negatives))


def test_drw_reweights_from_its_epoch_on_and_unknown_labels_count_nothing():
    loss = make_loss("ldam_drw", counts=COUNTS, drw_share=0.5)
    logits, labels = torch.randn(5, 4), torch.tensor([[1, 0, float("nan"), 0]] * 5)
    known = ~torch.isnan(labels)
    y = torch.nan_to_num(labels)
    plain = F.binary_cross_entropy_with_logits(logits - y * loss.margins, y, reduction="none")
    weighted = plain * class_balanced_weights(COUNTS, 0.9999)
    loss.set_epoch(1, 4)
    assert torch.allclose(loss(logits, labels), plain[known].mean())
    loss.set_epoch(2, 4)
    assert torch.allclose(loss(logits, labels), weighted[known].mean())
    with pytest.raises(ValueError, match="drw_share"):
        make_loss("ldam_drw", counts=COUNTS, drw_share=1.5)


def test_fit_classifier_tells_the_loss_each_epoch(monkeypatch):
    seen = []
    monkeypatch.setattr(LDAMDRW, "set_epoch", lambda self, epoch, epochs: seen.append((epoch, epochs)))
    model = build_classifier(ClassifierConfig("resnet18", 3, 32))
    images, labels = torch.rand(8, 1, 32, 32), (torch.rand(8, 3) > 0.5).float()
    fit_classifier(model, images, labels, TrainConfig(epochs=3, batch_size=4, loss="ldam_drw"))
    assert seen == [(0, 3), (1, 3), (2, 3)]


def test_class_aware_order_sees_a_rare_class_as_often_as_a_common_one():
    labels = torch.zeros(100, 2)
    labels[0, 0] = 1  # one image of the rare class
    labels[1:51, 1] = 1  # fifty of the common one; 49 normal films
    order = class_aware_order(labels, 3000, torch.Generator().manual_seed(0))
    rare = (order == 0).float().mean().item()
    common = ((order >= 1) & (order <= 50)).float().mean().item()
    assert rare == pytest.approx(1 / 3, abs=0.04) and common == pytest.approx(1 / 3, abs=0.04)
    assert order.max() < 100 and order.min() >= 0


def test_crt_retrains_only_the_last_layer_with_norm_statistics_frozen():
    torch.manual_seed(0)
    model = build_classifier(ClassifierConfig("resnet18", 3, 32))
    images, labels = torch.rand(12, 1, 32, 32), (torch.rand(12, 3) > 0.7).float()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    history = retrain_classifier(model, images, labels, TrainConfig(epochs=2, batch_size=4))
    after = model.state_dict()
    head = {f"fc.{k}" for k in model.get_classifier().state_dict()}
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == head, changed ^ head  # backbone weights and BatchNorm running stats untouched
    assert len(history["train_loss"]) == 2
    assert all(p.requires_grad for p in model.parameters())  # the freeze is undone


def test_crt_refuses_a_model_without_a_last_layer():
    with pytest.raises(ValueError, match="get_classifier"):
        retrain_classifier(torch.nn.Linear(4, 2), torch.rand(2, 1, 2, 2), torch.zeros(2, 2), TrainConfig(epochs=1))


def test_finetune_with_ldam_drw_and_crt_records_both(empty_run):  # noqa: F811
    with pytest.raises(ValueError, match="crt_epochs"):
        work.FinetuneSettings(crt_epochs=-1)
    settings = work.FinetuneSettings(epochs=2, bootstrap=10, settings=("baseline",), loss="ldam_drw", crt_epochs=1)
    rows = []
    result = work.finetune(empty_run["dataset"], None, empty_run["classifier"]["uri"], settings, rows.append)
    history = result["results"]["baseline"]["history"]
    assert len(history["train_loss"]) == 2 and len(history["crt_train_loss"]) == 1
    assert [r["epoch"] for r in rows] == [0, 1, 2]  # the cRT epoch continues the count
    assert result["results"]["baseline"]["generated_per_epoch"] == [0, 0]
