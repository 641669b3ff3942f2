"""Can a network tell generated rows from real ones? A linear probe on the classifier's features.

Two probes: against each row's parent (``probe``: part of what it sees is the intended change,
the head lesion gone) and against real train images with exactly the row's labels
(``probe_same_labels``: what is left is the generated pixels themselves).

Inpainted regions that a network can recognise teach it the wrong cue: a fine-tune may learn
"inpainted texture" instead of "no head lesion". The probe takes every accepted row of a generated
set and its parent (the same patient, real pixels), the pretrained classifier's features of each
(every backbone stage pooled: early stages see texture, the last one findings;
models.classifier.stage_features), and scores a logistic regression by cross-validated ROC-AUC,
a parent and its child always in the same fold. 0.5: the rows look real to this network; 1.0:
every generated row is recognisable.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from models.classifier import load_checkpoint, stage_features
from tasks import store
from tasks.dataset import SAMPLES
from tasks.tensors import load_tensors

FOLDS = 5


def accepted_rows(generated_uri: str):
    """The accepted rows of a generated set with their ``parent_id``, decoded once; None where
    there are none (no dataset, no shards, nothing accepted)."""
    if not store.exists(store.join(generated_uri, "dataset.json")) or \
            not store.list_shards(store.join(generated_uri, SAMPLES)):
        return None
    accepted = pc.field("accepted") == True  # noqa: E712 (an arrow expression)
    rows = load_tensors(generated_uri, where=accepted, columns=("parent_id", "accepted"))
    return rows if len(rows) else None


def probe(classifier_uri: str, dataset: str, generated_uri: str) -> dict:
    """Cross-validated ROC-AUC of a linear probe telling ``generated_uri``'s accepted rows from their
    parents in ``dataset``, on the classifier's pooled stage features; None where too few rows."""
    rows = accepted_rows(generated_uri)
    if rows is None or len(rows) < 2 * FOLDS:
        return {"pairs": 0 if rows is None else len(rows), "roc_auc": None}
    parent_ids = rows.table.column("parent_id").to_pylist()
    parents = load_tensors(dataset, where=pc.is_in(pc.field("sample_id"), pa.array(sorted(set(parent_ids)))))
    by_id = {sid: i for i, sid in enumerate(parents.sample_ids)}
    pair = np.array([by_id[p] for p in parent_ids])  # a parent with several children: one group
    real = parents.images[torch.from_numpy(pair)]
    return _cv_auc(classifier_uri, rows.images, real, pair)


def probe_same_labels(classifier_uri: str, dataset: str, generated_uri: str, seed: int = 0) -> dict:
    """The same probe against real train images that carry exactly the accepted row's labels (not
    its parent; each real image used once where there are enough): what is left is the
    generated pixels themselves, not the head lesion they no longer show."""
    rows = accepted_rows(generated_uri)
    if rows is None:
        return {"pairs": 0, "roc_auc": None}
    train = load_tensors(dataset, splits=("train",))
    labels = np.nan_to_num(train.labels.numpy(), nan=-1.0)
    rng, used = np.random.default_rng(seed), set()
    picked, kept = [], []
    for i, (want, parent) in enumerate(zip(np.nan_to_num(rows.labels.numpy(), nan=-1.0),
                                           rows.table.column("parent_id").to_pylist())):
        same = [j for j in np.nonzero((labels == want).all(axis=1))[0] if train.sample_ids[j] != parent]
        fresh = [j for j in same if j not in used] or same
        if fresh:
            j = int(rng.choice(fresh))
            used.add(j)
            picked.append(j)
            kept.append(i)
    if len(kept) < 2 * FOLDS:
        return {"pairs": len(kept), "roc_auc": None}
    return _cv_auc(classifier_uri, rows.images[kept], train.images[picked], np.arange(len(kept)))


def _cv_auc(classifier_uri: str, generated: torch.Tensor, real: torch.Tensor, pair: np.ndarray) -> dict:
    """5-fold cross-validated ROC-AUC of a logistic regression on the classifier's pooled stage
    features, generated (1) against real (0); a pair's two images always in one fold."""
    model = load_checkpoint(store.read_bytes(classifier_uri))[0].eval()
    features = torch.cat(stage_features(model, torch.cat([generated, real])), dim=1).double().numpy()
    n = len(generated)
    target = np.r_[np.ones(n), np.zeros(n)]
    groups = np.r_[pair, pair]
    scores = cross_val_score(make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=5000)), features,
                             target, groups=groups, scoring="roc_auc",
                             cv=StratifiedGroupKFold(n_splits=FOLDS, shuffle=True, random_state=0))
    return {"pairs": n, "roc_auc": round(float(scores.mean()), 3), "roc_auc_sd": round(float(scores.std()), 3)}
