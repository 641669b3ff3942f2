"""Can a network tell generated rows from real ones? A linear probe on the classifier's features.

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
    model = load_checkpoint(store.read_bytes(classifier_uri))[0].eval()
    features = torch.cat(stage_features(model, torch.cat([rows.images, real])), dim=1).double().numpy()
    n = len(rows)
    target = np.r_[np.ones(n), np.zeros(n)]
    groups = np.r_[pair, pair]
    scores = cross_val_score(make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=5000)), features,
                             target, groups=groups, scoring="roc_auc",
                             cv=StratifiedGroupKFold(n_splits=FOLDS, shuffle=True, random_state=0))
    return {"pairs": n, "roc_auc": round(float(scores.mean()), 3), "roc_auc_sd": round(float(scores.std()), 3)}
