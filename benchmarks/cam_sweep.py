"""Which CAM method and target layer localise head lesions best? Phantom ground truth.

    python -m benchmarks.cam_sweep   (after bench_models.py has trained the phantom classifier)

Reuses the phantom classifier of bench_models.py; sweeps GradCAM / GradCAM++ / LayerCAM /
EigenCAM over ResNet stages layer1 (16x16 at 64 px), layer2 (8x8), layer3 (4x4). Writes
benchmarks/results/cam_sweep.json.
"""

from __future__ import annotations

import json

from benchmarks.bench_models import SEED, localisation, phantom_classifier
from benchmarks.common import save
from flows.settings import tailforge_home
from models.classifier import load_checkpoint
from tasks import store
from tasks.tensors import lesion_masks, load_tensors


def main(n: int = 3000, epochs: int = 8) -> None:
    phantom = str(tailforge_home() / "bench" / f"phantom64-{n}-s{SEED}")
    handle = phantom_classifier(phantom, str(tailforge_home() / "models"), epochs)  # bench_models' (reused)
    model, _, card = load_checkpoint(store.read_bytes(handle["uri"]))
    test = load_tensors(phantom, splits=("test",), columns=("lesion_masks",))
    truth = lesion_masks(test.table)
    results = {}
    for layer in ("layer1", "layer2", "layer3"):
        for method in ("gradcam", "gradcam++", "layercam", "eigencam"):
            out = localisation(model, test.images, truth, test.labels, card.labels, set(card.head), method,
                               model.get_submodule(layer))
            results[f"{method}@{layer}"] = out["_all"]
            print(method, layer, json.dumps(out["_all"]), flush=True)
    best = max(results, key=lambda k: results[k]["pointing_game"])
    print(f"written: {save('cam_sweep', {'classifier': handle['id'], 'results': results, 'best_pointing': best})}")


if __name__ == "__main__":
    main()
