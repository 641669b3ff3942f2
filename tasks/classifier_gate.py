"""The classifier gate before augment: a class whose masks cannot mean anything is not removed.

Masks come from the classifier's evidence for a class (models/cam.py), and a removal is verified
by the same classifier. When the classifier cannot tell a class's positives from its negatives on
the dataset's val split, both are noise: masks land on film corners and the spine, and "removed"
rows are accepted by a classifier that would not have seen the lesion anyway. So before any
candidate is built, each head class a run may remove is scored on val (AUROC); a class below
``augment.min_class_auroc`` is kept on every image instead of removed (its label stays 1, so the
rows stay right), and the run's summary names it with its figure. 0.7 is the lower edge of
"acceptable discrimination" in Hosmer and Lemeshow's Applied Logistic Regression (AUROC 0.5:
chance). A class with fewer than ``MIN_POSITIVES`` val positives cannot be scored: it is removed as
before and named as unjudged.
"""

from __future__ import annotations

import numpy as np

from models.metrics import auroc
from models.training import predict_probs
from tasks.tensors import load_tensors

MIN_POSITIVES = 5


def class_report(dataset_uri: str, model, labels: list[str], classes: list[str], min_auroc: float) -> dict:
    """``judge`` on the classifier's probabilities for the dataset's val split."""
    try:
        val = load_tensors(dataset_uri, splits=("val",))
    except ValueError:  # a dataset without rows
        val = None
    if val is None or not len(val):
        return judge(np.zeros((0, len(labels))), np.zeros((0, len(labels))), labels, classes, min_auroc)
    return judge(predict_probs(model, val.images), val.labels.numpy(), labels, classes, min_auroc)


def judge(probs: np.ndarray, truth: np.ndarray, labels: list[str], classes: list[str], min_auroc: float) -> dict:
    """{"weak": {class: "val AUROC 0.55 < 0.7"}, "unjudged": {class: "2 val positives (< 5)"},
    "val_auroc": {class: AUROC}, "min_auroc": min_auroc} for ``classes`` (names of ``labels``, the
    columns of ``probs`` and ``truth``)."""
    report: dict = {"weak": {}, "unjudged": {}, "val_auroc": {}, "min_auroc": min_auroc}
    for name in classes:
        k = labels.index(name)
        positives = int((truth[:, k] == 1.0).sum())
        if positives < MIN_POSITIVES:
            report["unjudged"][name] = f"{positives} val positives (< {MIN_POSITIVES})"
            continue
        value = auroc(probs[:, k], truth[:, k])
        if value != value:  # NaN: every val image is positive
            report["unjudged"][name] = "no val negatives"
            continue
        report["val_auroc"][name] = round(value, 3)
        if value < min_auroc:
            report["weak"][name] = f"val AUROC {value:.2f} < {min_auroc:g}"
    return report
