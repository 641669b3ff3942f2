"""A normal-X-ray generator trained on a GPU, scored against the shipped one, and shipped only if
it wins (the GPU engine issue, item 5). Two steps, one here and one on the lent machine:

    python -m benchmarks.gpu_generator pack [--out .gpu-data]          # here, beside ../shared
    python -m benchmarks.gpu_generator train --data .gpu-data --out OUT [--preset tiny] [--minutes 5]
    python -m benchmarks.gpu_generator rescore OUT/normal_dit_128.safetensors    # back here

``pack``: ../shared is not copied to a GPU machine, and what travels there (the tree, the wheels,
this pack) must stay under 64 MiB. It writes the images the training and its scoring need into
one Parquet file: the train and test normals of ../shared/data/normals (adult rows, 128 px, the
same split the shipped generator's card names) and the nih1000 films (64 px, with NIH's labels
and fixed split), each image WebP-coded at the highest quality whose pack fits the room left
beside the tree and .whl (the quality and the coding's PSNR are in the pack and the card).

``train`` (CUDA; ``--cpu-smoke`` runs it tiny on the CPU to check the script): trains the
preset (models/dit.py PRESETS) with the product's trainer for the minutes given (the steps
sized from a timed probe), then scores it and the shipped generator (weights/) the same way:
1. FID / KID of 256 free samples against 256 held-out normals, beside two held-out halves (the
   floor), with the shipped card's encoder recipe (a ResNet-18 trained on the nih1000 train
   split at 64 px, trained here on the packed films);
2. the nearest-neighbour ratio (models.quality.fidelity: near 1 is good, well under 1 copies);
3. removal on real nih1000 test films (shown at 128 px): the product's removal
   (models.removal.remove_lesions with AugmentSettings' defaults; masks from a ResNet-18 trained
   on the packed train films at 128 px) of each film's findings among the three commonest, filled
   by each generator, judged by the encoder (another network at another size): the mean drop
   of the judge's probability for the removed findings, and the mean change for the kept ones;
4. one contact sheet: shipped samples, new samples, real normals; then film | mask | shipped
   fill | new fill for the first removals.
It writes OUT/gpu_generator.{json,md} and OUT/gpu_generator_grid.png, and, when the new generator
wins by ``wins``' rule (a lower FID by a margin, KID no higher, the NN ratio no further from 1,
the judged removal within 0.02 of the shipped generator's) and its file fits what a lent machine
hands back (16 MiB a file), OUT/normal_dit_<size>.safetensors and its card, to be copied into
weights/ once ``rescore`` agrees. The JSON is written after every stage.

``rescore`` (here): the handed-back file and the shipped one scored as the shipped card was, on
the PNG normals with the encoder trained on this machine; the card beside the file gets these
figures, which compare with the shipped card's.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

import models  # noqa: F401  (torchvision guard)
from benchmarks.common import commit, machine
from benchmarks.gpu_carry import LIMIT, carried_bytes

MARGIN = 2**19  # bytes of the carry kept free for commits made after the pack
RETURN_LIMIT = 16 * 2**20  # bytes of one file it hands back
QUALITIES = (95, 90, 85, 80, 75, 70, 60)  # WebP qualities tried, best first
HELD_OUT = 512  # test normals packed: two halves of 256 for the FID floor
FID_N = 256
FID_MARGIN = 0.1  # of the shipped generator's FID gap to the floor: what a new one must win by
JUDGE_SIZE = 64  # the FID encoder's (and removal judge's) input side: the shipped card's recipe
PACK_FILE = "pack.parquet"
GROUPS = ("normals_train", "normals_test", "nih_train", "nih_val", "nih_test")


# --- pack (here) -----------------------------------------------------------------------------

def webp(image01: torch.Tensor, quality: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray((image01[0].clamp(0, 1).numpy() * 255).round().astype(np.uint8)).save(buffer, "WEBP",
                                                                                          quality=quality)
    return buffer.getvalue()


def unwebp(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("L"))


def pack(groups: dict[str, tuple[torch.Tensor, torch.Tensor | None]], findings: list[str], path: Path,
         budget: int) -> dict:
    """Write ``groups`` (name -> (N, 1, S, S) images in [0, 1], (N, K) labels or None) to one
    Parquet file at the best quality of QUALITIES that fits ``budget`` bytes; returns its record."""
    for quality in QUALITIES:
        coded = {name: [webp(image, quality) for image in images] for name, (images, _) in groups.items()}
        size = sum(len(b) for blobs in coded.values() for b in blobs)
        if size <= budget:
            break
    else:
        raise SystemExit(f"the pack needs {size / 2**20:.1f} MiB even at WebP quality {QUALITIES[-1]}, and only "
                         f"{budget / 2**20:.1f} MiB are left beside the tree and .whl: carry fewer wheels "
                         "(make gpu-check-wheels, not gpu-wheels) or move large tracked files out of the tree")
    errors = [float(np.mean((unwebp(b).astype(np.float64) - (images[i, 0].numpy() * 255).round()) ** 2))
              for name, (images, _) in groups.items() for i, b in enumerate(coded[name][:64])]
    record = {"quality": quality, "bytes": size, "psnr_db": round(10 * np.log10(255**2 / max(np.mean(errors), 1e-9)), 2),
              "counts": {name: len(images) for name, (images, _) in groups.items()}, "findings": findings,
              "commit": commit()}
    rows = [(name, blob, None if labels is None else labels[i].tolist())
            for name, (_, labels) in groups.items() for i, blob in enumerate(coded[name])]
    table = pa.table({"group": [r[0] for r in rows], "image": pa.array([r[1] for r in rows], pa.binary()),
                      "labels": pa.array([r[2] for r in rows], pa.list_(pa.float32()))})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.replace_schema_metadata({"tailforge.pack": json.dumps(record)}), path, compression="none")
    return record


def real_groups() -> tuple[dict, list[str]]:
    """The shipped generator's data and the nih1000 films, from ../shared/data (ingested into
    $TAILFORGE_HOME/bench as the training benchmarks do; rows already there are reused)."""
    from benchmarks.common import ingest_nih1000
    from benchmarks.train_normal_dit import dataset
    from flows.settings import tailforge_home
    from tasks.pretrain import load_normals
    from tasks.tensors import load_tensors

    normals = dataset("real", 128, 0)
    train, _ = load_normals([normals], 128, splits=("train",))
    test, _ = load_normals([normals], 128, splits=("test",))
    nih = ingest_nih1000(str(tailforge_home() / "bench" / "experiment" / "nih1000"))
    parts = {split: load_tensors(nih, splits=(split,)) for split in ("train", "val", "test")}
    groups = {"normals_train": (train, None), "normals_test": (test[:HELD_OUT], None),
              **{f"nih_{split}": (part.images, part.labels) for split, part in parts.items()}}
    return groups, parts["train"].findings


def load_pack(folder: Path) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor | None]], dict]:
    """The packed groups as tensors in [0, 1] (and labels), and the pack's record."""
    from PIL import features

    if not features.check("webp"):
        raise SystemExit("this Pillow cannot decode WebP: install a Pillow built with libwebp")
    if not (folder / PACK_FILE).exists():
        raise SystemExit(f"no pack at {folder / PACK_FILE}: run `make gpu-data` beside ../shared and carry .gpu-data")
    table = pq.read_table(folder / PACK_FILE)
    record = json.loads(table.schema.metadata[b"tailforge.pack"])
    groups = {}
    for name in GROUPS:
        part = table.filter(pc.equal(table.column("group"), name))
        images = torch.from_numpy(np.stack([unwebp(b) for b in part.column("image").to_pylist()])[:, None] / 255.0)
        labels = part.column("labels").to_pylist()
        groups[name] = (images.float(), None if labels[0] is None else torch.tensor(labels, dtype=torch.float32))
    return groups, record


# --- train and score (on the GPU) --------------------------------------------------------------

def timed_steps(images: torch.Tensor, config, batch: int, seconds: float, device: torch.device, probe: int) -> dict:
    """How many training steps of ``batch`` fit in what is left of ``seconds`` after a probe:
    ``probe`` steps timed after as many warm-up steps (the first ones compile kernels and fill
    the allocator)."""
    from models.dit import DiTTrainConfig, train_dit

    started, marks = time.perf_counter(), {}

    def mark(step: int, loss: torch.Tensor) -> None:
        if step in (probe, 2 * probe):
            if device.type == "cuda":
                torch.cuda.synchronize()
            marks[step] = time.perf_counter()

    train_dit(images, config, DiTTrainConfig(steps=2 * probe, batch_size=batch, warmup_steps=1), progress=mark,
              device=device)
    per_step = (marks[2 * probe] - marks[probe]) / probe
    left = seconds - (time.perf_counter() - started)
    return {"seconds_per_step": per_step, "probe_seconds": time.perf_counter() - started,
            "steps": max(2 * probe, int(left / per_step))}


def shrink(images: torch.Tensor, size: int) -> torch.Tensor:
    return images if images.shape[-1] == size else F.interpolate(images, size=size, mode="area")


def grow(images: torch.Tensor, size: int) -> torch.Tensor:
    return images if images.shape[-1] == size else F.interpolate(images, size=size, mode="bilinear",
                                                                 align_corners=False).clamp(0, 1)


def removal(generator, config, classifier, judge, films: torch.Tensor, labels: torch.Tensor, head: list[int],
            thresholds: list[float], quick: bool = False) -> tuple[dict, list]:
    """The product's removal of each film's head findings with ``generator``'s fill, judged by
    ``judge`` (on the CPU, at its own size): mean probability drop of the removed findings and
    mean absolute change of the others; and the (film, mask, result) triples for the grid.
    ``quick`` (the CPU dry run): one round of a 5-step fill."""
    from models.dit import build_scheduler
    from models.removal import dit_fill, kept_classes, remove_lesions
    from models.training import predict_probs
    from tasks.augment import AugmentSettings

    product = AugmentSettings()
    fill, rounds = (replace(product.inpaint, steps=5), 1) if quick else (product.inpaint, product.removal_rounds)
    remove = [[k for k in head if labels[i, k] == 1] for i in range(len(films))]
    keep = kept_classes(labels.numpy(), remove)
    result = remove_lesions(classifier, films, remove, list(range(len(films))),
                            dit_fill(generator, build_scheduler(config), fill), method=product.cam_method,
                            mask=product.mask, localise=product.localise, thresholds=thresholds,
                            rounds=rounds, target=product.removal_target, keep=keep)
    ok = result.ok
    if not ok:
        return {"films": len(films), "removed": 0}, []
    before = predict_probs(judge, shrink(films[ok], JUDGE_SIZE))
    after = predict_probs(judge, shrink(result.generated.float().cpu(), JUDGE_SIZE))
    drops = [before[j, k] - after[j, k] for j, i in enumerate(ok) for k in remove[i]]
    kept = [abs(before[j, k] - after[j, k]) for j, i in enumerate(ok) for k in keep[i]]
    triples = [(films[i], torch.from_numpy(result.masks[i].mask).float()[None], result.generated[j].float().cpu())
               for j, i in enumerate(ok)]
    return {"films": len(films), "removed": len(ok), "lesions": len(drops),
            "judge_drop_mean": round(float(np.mean(drops)), 4),
            "judge_dropped_share": round(float(np.mean([d > 0 for d in drops])), 3),
            "kept_findings": len(kept), "judge_kept_change_mean": round(float(np.mean(kept)), 4) if kept else None}, triples


def score(generator, config, groups: dict, encoder, halves: tuple[torch.Tensor, torch.Tensor], floor: dict,
          removal_parts: tuple, quick: bool) -> tuple[dict, torch.Tensor, list]:
    """One generator's figures (FID/KID against the first of the held-out ``halves``, beside their
    ``floor``; NN ratio; judged removal) and its samples and removals."""
    from benchmarks.fidelity_measures import distances
    from benchmarks.train_normal_dit import samples_for_fid
    from models.quality import fidelity

    samples = samples_for_fid(generator, config, 16 if quick else FID_N, 5 if quick else 50)
    out = {"fid_kid": {"free_samples_vs_held_out_normals": distances(encoder, shrink(samples, JUDGE_SIZE), halves[0]),
                       "held_out_normals_split_halves": floor},
           "fidelity": fidelity(samples[:64], groups["normals_test"][0], groups["normals_train"][0])}
    out["removal"], triples = removal(generator, config, *removal_parts, quick=quick)
    return out, samples, triples


def wins(new: dict, old: dict) -> list[str]:
    """Why the new generator does not beat the shipped one (empty: it does): FID lower by
    FID_MARGIN of the shipped generator's gap to the floor (256 samples: an equal generator's FID
    lands below the shipped one's about half the time), KID no higher, the NN ratio no further
    from 1 (and not copying: at least 0.9), and, where removal was scored, the judged removal no
    weaker than the shipped generator's less 0.02 and the kept findings changed no more than its
    + 0.02."""
    why = []
    nf, of = new["fid_kid"]["free_samples_vs_held_out_normals"], old["fid_kid"]["free_samples_vs_held_out_normals"]
    bar = of["fid"] - FID_MARGIN * max(0.0, of["fid"] - old["fid_kid"]["held_out_normals_split_halves"]["fid"])
    if nf["fid"] >= bar:
        why.append(f"FID {nf['fid']} is not below {bar:.3f} (the shipped {of['fid']}, less {FID_MARGIN:.0%} of its "
                   "gap to the floor)")
    if nf["kid"] > of["kid"]:
        why.append(f"KID {nf['kid']} is above the shipped {of['kid']}")
    nr, orat = new["fidelity"]["ratio"], old["fidelity"]["ratio"]
    if abs(nr - 1) > abs(orat - 1) or nr < 0.9:
        why.append(f"NN ratio {nr:.3f} is further from 1 than the shipped {orat:.3f}, or under 0.9")
    if "removal" not in new:  # scored without removal (rescore): the other figures decide
        return why
    nrem, orem = new["removal"], old["removal"]
    if nrem.get("lesions") and orem.get("lesions"):
        if nrem["judge_drop_mean"] < orem["judge_drop_mean"] - 0.02:
            why.append(f"judged removal {nrem['judge_drop_mean']} is below the shipped {orem['judge_drop_mean']} - 0.02")
        if (nrem["judge_kept_change_mean"] or 0) > (orem["judge_kept_change_mean"] or 0) + 0.02:
            why.append(f"kept findings changed {nrem['judge_kept_change_mean']}, the shipped "
                       f"{orem['judge_kept_change_mean']} + 0.02")
    elif not nrem.get("lesions"):
        why.append("no removal was judged with the new generator")
    return why


def sheet(shipped: torch.Tensor, new: torch.Tensor, real: torch.Tensor, old_triples: list, new_triples: list,
          size: int) -> bytes:
    from benchmarks.grids import grid_png

    rows = [shipped[:8], new[:8], real[:8]]
    for film, mask, filled in new_triples[:4]:
        old = next((t for t in old_triples if torch.equal(t[0], film)), None)
        rows.append(torch.stack([film, mask, old[2] if old else torch.zeros_like(film), filled]))
    return grid_png(torch.cat([grow(r, size) for r in rows]), columns=8)


def train(args: argparse.Namespace) -> dict:
    from benchmarks.fidelity_measures import distances
    from benchmarks.train_normal_dit import card  # imported before the work: a missing module fails at once
    from models.classifier import ClassifierConfig, build_classifier
    from models.dit import DiTConfig, DiTTrainConfig, load_dit, preset_sizes, save_dit_safetensors, train_dit
    from models.metrics import tune_thresholds
    from models.training import TrainConfig, fit_classifier, predict_probs
    from tasks.pretrain import shipped_dit

    if not torch.cuda.is_available() and not args.cpu_smoke:
        raise SystemExit("gpu_generator train needs a host where torch sees CUDA (or --cpu-smoke to check the script)")
    device, quick = torch.device("cpu" if args.cpu_smoke else "cuda"), args.cpu_smoke
    started = time.perf_counter()
    groups, packed = load_pack(args.data)
    size = groups["normals_train"][0].shape[-1]
    shipped_path = shipped_dit(size)
    if shipped_path is None:
        raise SystemExit(f"no generator is shipped for {size} px in weights/: nothing to compare with")
    shipped, shipped_config, _ = load_dit(Path(shipped_path).read_bytes())
    config = DiTConfig(image_size=size, prediction="sample", **preset_sizes(args.preset, size))
    normals = groups["normals_train"][0]
    budget = args.minutes * 60 - (time.perf_counter() - started)
    timing = timed_steps(normals, config, args.batch, budget, device, probe=2 if quick else 20)
    steps = min(timing["steps"], args.max_steps) if args.max_steps else timing["steps"]
    settings = DiTTrainConfig(steps=steps, batch_size=args.batch, lr=args.lr, seed=0)
    last = [time.perf_counter()]

    def progress(step: int, loss: torch.Tensor) -> None:
        if time.perf_counter() - last[0] > 30 or step == steps:  # reading the loss waits for the device
            last[0] = time.perf_counter()
            print(f"step {step}/{steps} loss {float(loss):.4f} ({last[0] - started:.0f} s)", flush=True)

    say = lambda what: print(f"[gpu_generator {time.perf_counter() - started:.0f} s] {what}", flush=True)  # noqa: E731
    say(f"training {args.preset} for {steps} steps of {args.batch} ({timing['seconds_per_step'] * 1000:.1f} ms a step)")
    model, ema, history = train_dit(normals, config, settings, progress=progress, device=device)
    ema.copy_to(model)
    model.eval()
    say("training the encoder and the mask classifier on the packed nih1000 films")

    # the encoder (and removal judge) and the mask classifier, from the packed nih1000 films
    torch.manual_seed(0)
    epochs = 1 if quick else 8
    (nih_x, nih_y), (val_x, val_y), (test_x, test_y) = groups["nih_train"], groups["nih_val"], groups["nih_test"]
    encoder = build_classifier(ClassifierConfig("resnet18", nih_y.shape[1], JUDGE_SIZE)).to(device)
    fit_classifier(encoder, shrink(nih_x, JUDGE_SIZE), nih_y, TrainConfig(epochs=epochs, batch_size=32, augment=True, seed=0))
    encoder = encoder.cpu().eval()
    masker = build_classifier(ClassifierConfig("resnet18", nih_y.shape[1], size)).to(device)
    fit_classifier(masker, grow(nih_x, size), nih_y, TrainConfig(epochs=epochs, batch_size=64, augment=True, seed=0))
    thresholds = [float(t) for t in tune_thresholds(predict_probs(masker, grow(val_x, size)), val_y.numpy())]
    head = [int(k) for k in torch.argsort(nih_y.nansum(0), descending=True)[:3]]
    rows = [i for i in range(len(test_x)) if any(test_y[i, k] == 1 for k in head)][:2 if quick else 48]
    parts = (masker.eval(), encoder, grow(test_x[rows], size), test_y[rows], head, thresholds)

    result = {"commit": args.commit or commit(), "machine": machine(), "device": torch.cuda.get_device_name(0)
              if device.type == "cuda" else "cpu", "torch": torch.__version__, "preset": args.preset,
              "command": " ".join(["python -m benchmarks.gpu_generator train", f"--preset {args.preset}",
                                   f"--minutes {args.minutes}", f"--batch {args.batch}", f"--lr {args.lr}"]),
              "config": asdict(config), "train": asdict(settings), "timing": timing,
              "history": {"seconds": history["seconds"], "parameters": history["parameters"],
                          "loss_first": history["loss"][:5], "loss_last": history["loss"][-5:]},
              "pack": packed, "findings_removed": [packed["findings"][k] for k in head], "written": []}
    args.out.mkdir(parents=True, exist_ok=True)

    def write() -> None:  # after every stage: a run stopped by its time limit keeps what it measured
        result["seconds"] = time.perf_counter() - started
        (args.out / "gpu_generator.json").write_text(json.dumps(result, indent=1) + "\n")

    write()
    real = shrink(groups["normals_test"][0], JUDGE_SIZE)  # two halves: the floor both generators are scored beside
    halves = real[:len(real) // 2], real[len(real) // 2:2 * (len(real) // 2)]
    floor = distances(encoder, *halves)
    say("scoring the new generator")
    result["new"], new_samples, new_triples = score(model.to(device), config, groups, encoder, halves, floor, parts,
                                                    quick)
    write()
    say("scoring the shipped generator")
    old, old_samples, old_triples = score(shipped.to(device).eval(), shipped_config, groups, encoder, halves, floor,
                                          parts, quick)
    result["shipped"] = {"path": str(Path(shipped_path).name), **old}
    why = wins(result["new"], old)
    weights = save_dit_safetensors(model.float().cpu(), config, {
        "train_images": len(normals), "steps": steps,
        "data": f"../shared/data/normals, adult rows, train split (WebP quality {packed['quality']})"})
    result.update({"wins": not why, "why_not": why, "weights_bytes": len(weights)})
    if not why and len(weights) > RETURN_LIMIT:
        result["why_not_written"] = (f"its file is {len(weights) / 2**20:.1f} MiB: a lent machine hands back "
                                     f"{RETURN_LIMIT / 2**20:.0f} MiB a file")
    write()
    (args.out / "gpu_generator_grid.png").write_bytes(sheet(old_samples, new_samples, groups["normals_test"][0],
                                                            old_triples, new_triples, size))
    (args.out / "gpu_generator.md").write_text(markdown(result))
    name = f"normal_dit_{size}"
    if not why and len(weights) <= RETURN_LIMIT:
        (args.out / f"{name}.safetensors").write_bytes(weights)
        (args.out / f"{name}.md").write_text(card(
            name, config, weights, len(normals), asdict(settings),
            f"{history['seconds'] / 60:.1f} min on one {result['device']} (bf16 autocast), commit `{result['commit']}`",
            f"`{result['command']}` on a lent GPU machine (docs/operations.md, \"A generator trained on the GPU\")",
            result["new"]["fid_kid"], result["new"]["fidelity"]["ratio"], "benchmarks/results/gpu_generator_grid.png",
            f", WebP-coded at quality {packed['quality']} to travel (PSNR {packed['psnr_db']} dB)"))
        result["written"] = [f"{name}.safetensors", f"{name}.md"]
        write()
        (args.out / "gpu_generator.md").write_text(markdown(result))
    print(markdown(result), flush=True)
    return result


def markdown(result: dict) -> str:
    new, old = result["new"], result["shipped"]
    line = lambda name, r: (  # noqa: E731
        f"| {name} | {r['fid_kid']['free_samples_vs_held_out_normals']['fid']} | "
        f"{r['fid_kid']['free_samples_vs_held_out_normals']['kid']} | {r['fid_kid']['held_out_normals_split_halves']['fid']} | "
        f"{r['fidelity']['ratio']:.3f} | {r['removal'].get('removed', 0)} / {r['removal']['films']} | "
        f"{r['removal'].get('judge_drop_mean', '-')} | {r['removal'].get('judge_kept_change_mean', '-')} |")
    verdict = ("Does not win: " + "; ".join(result["why_not"]) + "." if not result["wins"] else
               "**Wins** (`wins`): " + (f"{' and '.join(result['written'])} written." if result["written"] else
                                        f"not written: {result.get('why_not_written', 'not yet written')}."))
    return "\n".join([
        f"# A generator trained on the GPU against the shipped one\n",
        f"Commit `{result['commit']}`, {result['device']}, torch {result['torch']}. Command: "
        f"`{result['command']}`. {result['seconds']:.0f} s in all.\n",
        f"Preset `{result['preset']}` ({result['history']['parameters'] / 1e6:.1f} M parameters): "
        f"{result['train']['steps']} steps of batch {result['train']['batch_size']} in "
        f"{result['history']['seconds']:.0f} s ({result['timing']['seconds_per_step'] * 1000:.1f} ms a step). "
        f"Data: {result['pack']['counts']['normals_train']} train normals, WebP quality {result['pack']['quality']} "
        f"(PSNR {result['pack']['psnr_db']} dB).\n",
        "| generator | FID | KID | floor FID | NN ratio | films removed | judge drop (removed) | "
        "judge change (kept) |", "|---|---|---|---|---|---|---|---|",
        line("new", new), line(f"shipped ({old['path']})", old), "",
        f"Removed: {', '.join(result['findings_removed'])} where present, on nih1000 test films at "
        f"{result['config']['image_size']} px. Grid: gpu_generator_grid.png (rows: shipped samples, new samples, "
        "real normals, then two removals a row: film | mask | shipped fill | new fill).\n", verdict, ""])


def rescore(path: Path) -> dict:
    """A generator the lease handed back and the shipped one, scored here as the shipped card was
    (benchmarks/train_normal_dit.py: the PNG normals, not the WebP pack; the encoder trained on
    this machine): what to read before copying the file into weights/."""
    from benchmarks.grids import sample_grid
    from benchmarks.train_normal_dit import (FIDELITY_HEADING, dataset, encoder_distances, fidelity_section,
                                             samples_for_fid)
    from models.dit import load_dit, load_dit_config
    from models.quality import fidelity
    from tasks.pretrain import load_normals, shipped_dit

    size = load_dit_config(path.read_bytes()).image_size
    if shipped_dit(size) is None:
        raise SystemExit(f"no generator is shipped for {size} px in weights/: nothing to compare with")
    out = {}
    for name, file in (("new", path), ("shipped", Path(shipped_dit(size)))):
        model, config, _ = load_dit(file.read_bytes())
        uri = dataset("real", config.image_size, 0)
        train_images, _ = load_normals([uri], config.image_size, splits=("train",))
        held_out, _ = load_normals([uri], config.image_size, splits=("test",))
        samples = sample_grid(model.eval(), config, n=64, steps=50, seed=1)
        out[name] = {"file": str(file), "fid_kid": encoder_distances(samples_for_fid(model, config), held_out),
                     "fidelity": fidelity(samples, held_out[:512], train_images)}
        print(json.dumps({name: out[name]}), flush=True)
    why = wins(out["new"], out["shipped"])
    card = path.with_suffix(".md")
    if card.exists():  # its card's figures become these, which compare with the shipped card's
        text = card.read_text()
        card.write_text(text[:text.index(FIDELITY_HEADING)] + fidelity_section(
            out["new"]["fid_kid"], out["new"]["fidelity"]["ratio"], "benchmarks/results/gpu_generator_grid.png",
            "Scored on the PNG normals as the earlier cards were (`python -m benchmarks.gpu_generator rescore`)."))
    print("wins: copy it and its card into weights/" if not why else "does not win: " + "; ".join(why), flush=True)
    return {**out, "wins": not why, "why_not": why}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="pack the normals and nih1000 films to travel (here, beside ../shared)")
    p.add_argument("--out", type=Path, default=Path(".gpu-data"))
    p.add_argument("--budget-mib", type=float, help="room for the pack (default: the 64 MiB a GPU run carries, "
                   "less the tree, .whl and 0.5 MiB)")
    t = sub.add_parser("train", help="train, score against the shipped generator, write the winner (on a GPU)")
    t.add_argument("--data", type=Path, default=Path(".gpu-data"))
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--preset", default="tiny", help="a models/dit.py preset (default tiny: the one whose file "
                   "a lent machine can hand back; small is 67 MiB in bf16)")
    t.add_argument("--minutes", type=float, default=5.0, help="training time, the probe included")
    t.add_argument("--batch", type=int, default=256)
    t.add_argument("--lr", type=float, default=3e-4)
    t.add_argument("--max-steps", type=int, help="at most this many steps (a CPU smoke test)")
    t.add_argument("--commit", help="the commit measured (default: $TAILFORGE_COMMIT or git's)")
    t.add_argument("--cpu-smoke", action="store_true", help="run on the CPU: checks the script, its figures mean nothing")
    r = sub.add_parser("rescore", help="score a handed-back generator and the shipped one here, as the card was")
    r.add_argument("weights", type=Path)
    args = parser.parse_args(argv)
    if args.command == "train":
        return train(args)
    if args.command == "rescore":
        return rescore(args.weights)
    budget = int(args.budget_mib * 2**20) if args.budget_mib else LIMIT - carried_bytes(folders=(".whl",)) - MARGIN
    groups, findings = real_groups()
    record = pack(groups, findings, args.out / PACK_FILE, budget)
    print(json.dumps(record))
    return record


if __name__ == "__main__":
    main()
