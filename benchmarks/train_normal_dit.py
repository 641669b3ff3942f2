"""Train the normal-X-ray DiT and measure it: loss curve, sample grid, fidelity; ship it.

    python -m benchmarks.train_normal_dit --source real --steps 3000      # ../shared/data/normals (adult)
    python -m benchmarks.train_normal_dit --source phantom --steps 1500   # phantom normals
    python -m benchmarks.train_normal_dit --source real --size 128 --steps 2000 --ship   # `make weights`

The checkpoint goes to $TAILFORGE_HOME/models (not committed); the grids, the loss curve and
benchmarks/results/dit_<source>.json (fidelity against held-out normals, settings, timing) are
the record. Fidelity: nearest-real-neighbour distance of 64 free samples to the training
normals, against the same distance for held-out (test-split) real normals (ratio near 1 is good);
for real normals also FID and KID of 256 free samples against 256 held-out normals, in the
feature space of a ResNet-18 trained here on ../shared/data/nih1000 (64 px; larger images are
shrunk to 64 for it), beside the same distances between two halves of held-out normals (the floor).
``--ship`` writes the EMA weights as weights/normal_dit_<size>.safetensors with its card
(weights/normal_dit_<size>.md): the generator `tailforge run` uses on real data of that size
unless the settings name another (tasks.pretrain.shipped_dit).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from benchmarks.common import RESULTS, SHARED_DATA, commit, ingest_nih1000, machine, save
from flows.settings import tailforge_home
from models.dit import DiTConfig, DiTTrainConfig, load_dit
from models.quality import fidelity
from tasks import sources, store
from tasks.ingest import IngestOptions, ingest, ingest_phantom
from benchmarks.grids import grid_png, sample_grid
from tasks.pretrain import load_normals, train_normal_dit


def dataset(source: str, size: int, phantom_n: int) -> str:
    home = tailforge_home() / "bench"
    if source == "real":
        uri = str(home / f"normals{size}")
        ingest(sources.read_folder(str(SHARED_DATA / "normals" / "normals.csv")), str(SHARED_DATA / "normals"),
               uri, IngestOptions(size=size, shard_rows=4096))
    else:
        uri = str(home / f"phantom{size}-{phantom_n}")
        ingest_phantom(uri, phantom_n, size=size, seed=11)
    return uri


def loss_plot(losses: list[float], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    window = max(1, len(losses) // 50)
    smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot(losses, alpha=0.25, label="step")
    ax.plot(range(window - 1, len(losses)), smooth, label=f"mean of {window}")
    ax.set_xlabel("step"), ax.set_ylabel("DDPM loss"), ax.set_yscale("log"), ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", choices=["real", "phantom"], default="real")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--phantom-n", type=int, default=4000)
    parser.add_argument("--patch", type=int, help="DiT patch side (default: 4 up to 64 px, else 8)")
    parser.add_argument("--prediction", choices=["sample", "epsilon"], default="sample")
    parser.add_argument("--ship", action="store_true", help="write weights/normal_dit_<size>.safetensors and its card")
    args = parser.parse_args()
    if args.ship and args.source != "real":
        parser.error("--ship is for the real normals corpus (--source real)")
    config = DiTConfig(image_size=args.size, patch_size=args.patch or (4 if args.size <= 64 else 8), depth=6,
                       num_heads=4, head_dim=32, prediction=args.prediction)
    train = DiTTrainConfig(steps=args.steps, batch_size=args.batch, lr=3e-4, warmup_steps=200, seed=0)
    uri = dataset(args.source, args.size, args.phantom_n)
    models_uri = str(tailforge_home() / "models")
    started = time.perf_counter()

    def progress(step: int, loss: float) -> None:
        if step % 100 == 0 or step == 1:
            print(f"step {step}/{args.steps} loss {loss:.4f} ({time.perf_counter() - started:.0f} s)", flush=True)

    handle = train_normal_dit([uri], models_uri, config, train, progress=progress)
    model, _, _ = load_dit(store.read_bytes(handle["uri"]))
    samples = sample_grid(model, config, n=64, steps=50, seed=1)
    train_images, _ = load_normals([uri], args.size, splits=("train",))
    held_out, _ = load_normals([uri], args.size, splits=("test",))
    fid = fidelity(samples, held_out[:512], train_images)
    noise = fidelity(torch.rand_like(samples), held_out[:512], train_images)
    distances = encoder_distances(samples_for_fid(model, config), held_out) if args.source == "real" else None
    tag = f"dit_{args.source}" + ("" if args.size == 64 else f"_{args.size}")
    (RESULTS / f"{tag}_samples.png").write_bytes(grid_png(samples[:32]))
    (RESULTS / f"{tag}_real.png").write_bytes(grid_png(held_out[:32]))
    if "loss" in handle:  # a reused checkpoint (same data and settings) keeps its earlier plot
        loss_plot(handle["loss"], RESULTS / f"{tag}_loss.png")
    record = {"settings": {"source": args.source, "dataset": uri, "config": config.__dict__,
                           "train": train.__dict__, "adult_only": True},
              "checkpoint": {"id": handle["id"], "uri": handle["uri"]},
              "train_images": int(train_images.shape[0]), "held_out_images": int(held_out.shape[0]),
              "history": handle["history"], "fidelity": fid, "fidelity_of_uniform_noise": noise,
              "fid_kid": distances}
    path = save(tag, record)
    if args.ship:
        ship(model, config, record, tag)
    print(json.dumps({"history": handle["history"], "fidelity": fid, "noise": noise}, indent=2))
    print(f"written: {path}")


def samples_for_fid(model, config: DiTConfig, n: int = 256, steps: int = 50) -> torch.Tensor:
    """``n`` free samples, 64 a call (call k seeded 100 + k), on the CPU."""
    return torch.cat([sample_grid(model, config, n=min(64, n - k), steps=steps, seed=100 + k // 64)
                      for k in range(0, n, 64)]).float().cpu()


def encoder_distances(samples: torch.Tensor, held_out: torch.Tensor) -> dict:
    """FID / KID of 256 free samples against 256 held-out normals, and of two held-out halves
    (the floor), with a ResNet-18 trained on nih1000 (reused when trained before) as the encoder."""
    import torch.nn.functional as F

    from benchmarks.fidelity_measures import distances
    from models.classifier import ClassifierConfig, load_checkpoint
    from models.training import TrainConfig
    from tasks.pretrain import train_classifier

    uri = ingest_nih1000(str(tailforge_home() / "bench" / "experiment" / "nih1000"))  # the experiment's copy
    handle = train_classifier(uri, str(tailforge_home() / "models"), ClassifierConfig("resnet18", 14, 64),
                              TrainConfig(epochs=8, batch_size=32, augment=True, seed=0))
    encoder = load_checkpoint(store.read_bytes(handle["uri"]))[0].eval()
    small = lambda x: F.interpolate(x, size=64, mode="area") if x.shape[-1] != 64 else x  # noqa: E731
    real = small(held_out[:512])
    return {"encoder": {"classifier": handle["uri"], "data": "nih1000 train split, 64 px"},
            "free_samples_vs_held_out_normals": distances(encoder, small(samples), real[:256]),
            "held_out_normals_split_halves": distances(encoder, real[:256], real[256:512])}


def ship(model, config: DiTConfig, record: dict, tag: str) -> None:
    """weights/normal_dit_<size>.safetensors (EMA weights and config) and its card."""
    from models.dit import save_dit_safetensors
    from tasks.pretrain import weights_dir

    folder = weights_dir()
    folder.mkdir(exist_ok=True)
    name = f"normal_dit_{config.image_size}"
    data = save_dit_safetensors(model, config, {"train_images": record["train_images"],
                                                "steps": record["settings"]["train"]["steps"],
                                                "data": "../shared/data/normals, adult rows, train split"})
    (folder / f"{name}.safetensors").write_bytes(data)
    train = record["settings"]["train"]
    text = card(name, config, data, record["train_images"], train,
                f"{record['history']['seconds'] / 60:.0f} min on a {machine()['cores']}-core CPU machine "
                f"({machine()['cpu']}, no GPU), commit `{commit()}`",
                f"`python -m benchmarks.train_normal_dit --source real --size {config.image_size} "
                f"--steps {train['steps']} --ship` (`make weights`)",
                record["fid_kid"], record["fidelity"]["ratio"], f"benchmarks/results/{tag}_samples.png; real: {tag}_real.png")
    (folder / f"{name}.md").write_text(text)
    print(f"shipped: {folder / name}.safetensors ({len(data) / 1e6:.1f} MB) and its card")


def card(name: str, config: DiTConfig, data: bytes, train_images: int, train: dict, trained: str, command: str,
         fid_kid: dict, nn_ratio: float, samples: str, data_form: str = "") -> str:
    """A shipped generator's card (weights/<name>.md): what it is, its data and training, and its
    fidelity against held-out normals beside the floor. ``trained`` says how long, on what, at
    which commit; ``command`` (markdown) what made it; ``data_form`` how the images reached the
    trainer when not as the PNGs themselves."""
    from models.checkpoint import checkpoint_id

    return "\n".join([
        f"# {name}: the shipped normal chest X-ray generator ({config.image_size} px)", "",
        f"- File: `{name}.safetensors`, {len(data) / 1e6:.1f} MB, sha256 `{checkpoint_id(data)}`.",
        "- What: a DiT (models/dit.py) in pixel space that predicts the clean image "
        f"(prediction `{config.prediction}`), patch {config.patch_size}, depth {config.depth}, "
        f"width {config.num_heads * config.head_dim}; EMA weights.",
        f"- Data: {train_images} adult normal chest X-rays, the train split of "
        "../shared/data/normals (three public sources; its README), at "
        f"{config.image_size} px{data_form}. Val and test rows never seen.",
        f"- Training: {train['steps']} steps of batch {train['batch_size']}, AdamW lr {train['lr']}, {trained}.",
        f"- Command: {command}.", "", fidelity_section(fid_kid, nn_ratio, samples)])


FIDELITY_HEADING = "## Fidelity (held-out normals)"


def fidelity_section(fid_kid: dict, nn_ratio: float, samples: str, scored: str = "") -> str:
    """A card's fidelity section (from its heading to the end): FID/KID beside the floor, the NN
    ratio, where the samples are; ``scored`` says where and how, when not where it was trained."""
    return "\n".join([
        FIDELITY_HEADING, "", *([scored, ""] if scored else []),
        "| comparison | FID | KID |", "|---|---|---|",
        f"| free samples vs held-out normals | {fid_kid['free_samples_vs_held_out_normals']['fid']} | "
        f"{fid_kid['free_samples_vs_held_out_normals']['kid']} |",
        f"| held-out normals, two halves (floor) | {fid_kid['held_out_normals_split_halves']['fid']} | "
        f"{fid_kid['held_out_normals_split_halves']['kid']} |", "",
        "Encoder: a ResNet-18 trained here on the nih1000 train split (64 px; images shrunk to "
        "64 for it); nothing downloaded. 256 samples against 256 images, so FID carries a "
        "small-sample bias: compare with the floor row, not with published FIDs.",
        f"Nearest-neighbour distance to the training normals, 64 samples against held-out normals: "
        f"ratio {nn_ratio:.3f} (near 1 is good).", "", f"Samples: {samples}.", ""])


if __name__ == "__main__":
    main()
