"""The fine-tune stage with its data decoded once per run (the product) against decoded again in
every setting's task (the code before issue 13), on the outputs of `make demo`.

    make demo && python -m benchmarks.bench_finetune_decode [--home .tailforge]
"""

from __future__ import annotations

import argparse
import glob
import time

from benchmarks.common import save
from flows.settings import tailforge_home
from tasks import finetune as work

DEMO = {"epochs": 3, "beta": 0.5, "lr": 0.0003, "bootstrap": 200}  # flows/demo.yaml's finetune section


def stage(dataset: str, augmented: str, classifier: str, decode_each_setting: bool) -> float:
    """The finetune flow's work: a look at the generated set, then one task per setting."""
    started = time.perf_counter()
    work._decoded_dataset.cache_clear()
    work._decoded_generated.cache_clear()
    work.load_data(dataset, augmented, True)
    for name in work.SETTINGS:
        if decode_each_setting:
            work._decoded_dataset.cache_clear()
            work._decoded_generated.cache_clear()
        work.finetune(dataset, augmented, classifier, work.FinetuneSettings(**DEMO, settings=(name,)))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default=str(tailforge_home()), help="the demo's $TAILFORGE_HOME")
    args = parser.parse_args()
    dataset, augmented = f"{args.home}/datasets/demo-phantom", f"{args.home}/runs/demo/augmented"
    classifier = sorted(glob.glob(f"{args.home}/models/classifier-*.pt"))[0]
    once = stage(dataset, augmented, classifier, decode_each_setting=False)
    each = stage(dataset, augmented, classifier, decode_each_setting=True)
    path = save("bench_finetune_decode", {"settings": DEMO, "decoded_once_s": round(once, 1),
                                          "decoded_per_setting_s": round(each, 1)})
    print(f"fine-tune stage on the demo: decoded once {once:.1f} s, decoded in every setting {each:.1f} s ({path})")


if __name__ == "__main__":
    main()
