"""How the product's infill map is chosen: window size x smoothing x class-prior weight, on the
validation split of the 128 px phantom (head lesions the classifier calls, as the gate does).

    python -m benchmarks.infill_sweep   (after benchmarks/fidelity.py has trained the 128 px models)

The test split is for benchmarks/fidelity.py alone: the defaults in models.cam.LocaliseConfig
are the best row here, then measured once there. Writes benchmarks/results/infill_sweep.json.
"""

from __future__ import annotations

import json

from benchmarks import fidelity_measures as fm
from benchmarks.common import save
from benchmarks.fidelity import head_lesions, prepare, priors_of
from models.cam import LocaliseConfig, refine
from models.classifier import load_checkpoint
from models.occlusion import infill_maps
from models.training import predict_probs
from tasks import store
from tasks.tensors import lesion_masks, load_tensors

WINDOWS = (0.25, 0.125)
PRIOR_WEIGHTS = (0.5, 1.0)


def main(size: int = 128, n: int = 3000, dit_steps: int = 4000) -> None:
    prep = prepare(size, n, dit_steps)
    model, _, card = load_checkpoint(store.read_bytes(prep["main"]["classifier"]))
    val = load_tensors(prep["main"]["dataset"], splits=("val",), columns=("lesion_masks",))
    train = load_tensors(prep["main"]["dataset"], splits=("train",), columns=("lesion_masks",))
    lesions = head_lesions(lesion_masks(val.table), card.head, val.images.shape[-2:])
    classes = [card.labels.index(name) for _, name, *_ in lesions]
    probs = predict_probs(model, val.images[[i for i, *_ in lesions]])
    called = [j for j, c in enumerate(classes) if probs[j, c] >= card.thresholds[c]]
    images = val.images[[lesions[j][0] for j in called]]
    classes = [classes[j] for j in called]
    priors, results = priors_of(card, train), {}
    for window in WINDOWS:
        for smooth in (False, True):
            raw = infill_maps(model, images, classes, window=window, stride=LocaliseConfig().stride, smooth=smooth)
            for weight in PRIOR_WEIGHTS:
                maps = refine(raw, classes, LocaliseConfig(window=window, prior_weight=weight), priors)
                rows = [(lesions[j][1], fm.localisation_row(m, m > 0.5, lesions[j][2], lesions[j][3]))
                        for j, m in zip(called, maps)]
                key = f"window {window}, {'smoothed' if smooth else 'unsmoothed'}, prior weight {weight}"
                summary = fm.summarise(rows)
                results[key] = {name: s["pointing_game"] for name, s in summary.items()}
                print(key, json.dumps(results[key]), flush=True)
    best = max(results, key=lambda k: results[k]["_all"])
    print(f"written: {save('infill_sweep', {'split': 'val', 'lesions': len(called), 'results': results, 'best': best})}")


if __name__ == "__main__":
    main()
