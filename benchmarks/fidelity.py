"""Sample fidelity on phantom ground truth: do the masks land on the head lesion, and does the
fill paint it out? One command, `make fidelity`:

    python -m benchmarks.fidelity [--sizes 64 128] [--n 3000] [--images 96] [--dit-steps 2000]

Per size: a phantom dataset (seed 21) and its ResNet-18 classifier (the product's masks), a
judge classifier on another phantom seed (22, never used for masks), and a DiT trained on the
phantom's normal training images. Then, on test images:
1. localisation of every head lesion by each map the product offers, against two floors: the
   class location prior (the mean training mask of the class, no image used) and a uniformly
   random point;
2. removal and retention with three mask sources (the product's CAM masks, oracle = the true
   lesion masks grown 2 px, random = the CAM mask moved at random) x three fills (the DiT
   sampler the product uses, a harmonic fill, a paste from another patient's normal film);
3. FID / KID of free DiT samples and of filled images against held-out real images, with the
   judge classifier's pooled features as the encoder (trained here, nothing downloaded);
4. grids: image | map | mask | result | lesion-free render.
Criteria and their reasons: benchmarks/fidelity_measures.py. Writes
benchmarks/results/fidelity_<size>.{json,md} and fidelity_<size>_*.png.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from dataclasses import asdict, replace

import numpy as np
import torch
from PIL import Image

import models  # noqa: F401  (torchvision guard)
from benchmarks import fidelity_measures as fm
from benchmarks.common import RESULTS, commit, machine, save
from benchmarks.phantom_truth import _replay
from flows.settings import tailforge_home
from models.cam import LocaliseConfig, class_maps, raw_maps, refine
from models.masks import MaskConfig, map_to_mask, relocate
from models.classifier import ClassifierConfig, load_checkpoint
from models.dit import DiTConfig, DiTTrainConfig, build_scheduler, load_dit
from models.fill import harmonic_fill
from models.inpaint import InpaintConfig, inpaint
from models.removal import Removal, dit_fill, kept_classes, remove_lesions
from models.sampling import sample
from models.training import TrainConfig, predict_probs
from tasks import store
from tasks.augment import AugmentSettings, present, verdict
from tasks.dataset import existing_rows
from tasks.ingest import ingest_phantom
from tasks.knowledge.decision import Question
from tasks.knowledge.rules import RulesJudge
from tasks.pretrain import card_location_prior, location_prior, train_classifier, train_normal_dit
from tasks.tensors import lesion_masks, load_tensors

SEED, JUDGE_SEED, RETENTION_SEED = 21, 22, 23
PRODUCT = AugmentSettings()  # the product's defaults are what is measured
NOISE_START = InpaintConfig(steps=25, jump_length=5, resample=2)
HARMONIC_START = InpaintConfig(steps=25, jump_length=5, resample=2, init="harmonic", strength=0.6)
# (mask growth px, removal rounds, removal target) measured beside the product's
MASK_VARIANTS = ((2, 1, 1.0), (4, 4, 0.25), (8, 4, 0.25))


def phantom(uri: str, n: int, size: int, seed: int) -> str:
    """The benchmark's phantom dataset at ``uri``, rendered when it is not there yet (the same
    seed renders the same images, so a rerun reuses them instead of rendering 3,000 again)."""
    rows = existing_rows(uri, ["sample_id"])
    if rows is None or rows.num_rows < n:
        ingest_phantom(uri, n, size=size, seed=seed)
    return uri


def prepare(size: int, n: int, dit_steps: int, conditioning: str = "none", prediction: str = "sample") -> dict:
    """Datasets and checkpoints for one size (each reused when already trained)."""
    home, models_uri = tailforge_home() / "bench", str(tailforge_home() / "models")
    out = {}
    for role, seed in (("main", SEED), ("judge", JUDGE_SEED)):
        uri = phantom(str(home / f"phantom{size}-{n}-s{seed}"), n, size, seed)
        train = TrainConfig(epochs=8, batch_size=64, seed=0)
        handle = train_classifier(uri, models_uri, ClassifierConfig("resnet18", 14, size), train)  # reused when made
        out[role] = {"dataset": uri, "classifier": handle["uri"]}
    patch = 4 if size <= 64 else 8
    config = DiTConfig(image_size=size, patch_size=patch, depth=6, num_heads=4, head_dim=32, conditioning=conditioning,
                       prediction=prediction)
    dit_train = DiTTrainConfig(steps=dit_steps, batch_size=32, warmup_steps=100)
    uri = out["main"]["dataset"]
    handle = train_normal_dit([uri], models_uri, config, dit_train)
    out["dit"] = {"uri": handle["uri"], "config": asdict(config), "steps": dit_steps}
    return out


def head_lesions(truths: list[dict], head: list[str], shape) -> list[tuple[int, str, np.ndarray, np.ndarray]]:
    """(image row, class, lesion mask, all lesions of the image) for every visible head lesion."""
    out = []
    for i, truth in enumerate(truths):
        every = np.zeros(shape, dtype=bool)
        for m in truth.values():
            every |= m
        out += [(i, name, m, every) for name, m in truth.items() if name in head and m.any()]
    return out


NO_PRIOR = dict(prior_weight=0.0, gate=False)
LOCALISERS = {  # label -> (CAM method, LocaliseConfig); "product" is the product's default, gate included
    "gradcam, deepest 8-wide stage": ("gradcam", LocaliseConfig(**NO_PRIOR)),
    "gradcam layer1": ("gradcam", LocaliseConfig(layers=("layer1",), **NO_PRIOR)),
    "hirescam layer2": ("hirescam", LocaliseConfig(layers=("layer2",), **NO_PRIOR)),
    "gradcam layer2+layer3": ("gradcam", LocaliseConfig(layers=("layer2", "layer3"), **NO_PRIOR)),
    "gradcam + border 4%": ("gradcam", LocaliseConfig(border=0.04, **NO_PRIOR)),
    "gradcam layer1 x prior": ("gradcam", LocaliseConfig(layers=("layer1",), gate=False)),
    "gradcam x prior": ("gradcam", LocaliseConfig(gate=False)),
    "infill": ("infill", LocaliseConfig(**NO_PRIOR)),
    "infill x prior": ("infill", LocaliseConfig(gate=False)),
    "infill x prior, windows 0.25 wide, prior weight 1": ("infill", LocaliseConfig(window=0.25, prior_weight=1.0, gate=False)),
    "product": (PRODUCT.cam_method, PRODUCT.localise),
}


def priors_of(card, train) -> dict[int, np.ndarray]:
    """The card's class location priors (as the product reads them); for a card trained before
    cards carried them, the same function the product's pretraining uses."""
    table = card.location_prior or card_location_prior(train)
    return {card.labels.index(name): np.asarray(p) for name, p in table.items() if name in card.labels}


def localisation(model, card, test, train, truth: list[dict]) -> dict:
    lesions = head_lesions(truth, card.head, test.images.shape[-2:])
    images = test.images[[i for i, *_ in lesions]]
    classes = [card.labels.index(name) for _, name, *_ in lesions]
    priors = priors_of(card, train)
    prior = location_prior(train, side=test.images.shape[-1])  # the floor: full resolution, unrounded
    probs = predict_probs(model, images)
    called = np.array([probs[j, c] >= card.thresholds[c] for j, c in enumerate(classes)])
    out = {"lesions": len(lesions), "called_share": round(float(called.mean()), 3),
           "random_point": fm.random_point_pointing([(name, m) for _, name, m, _ in lesions])}
    uniform = np.ones(images.shape[-2:], np.float32)
    variants = {"class location prior": np.stack([prior.get(name, uniform) for _, name, *_ in lesions])}
    raw: dict[tuple, np.ndarray] = {}  # one raw map per (method, layers, window): refinements reuse it
    for label, (method, config) in LOCALISERS.items():
        key = (method, config.layers, config.window, config.stride)
        if key not in raw:
            started = time.perf_counter()
            raw[key] = raw_maps(model, images, classes, config, method)
            out.setdefault("seconds_per_lesion", {})[method + " " + ",".join(config.layers)] = round(
                (time.perf_counter() - started) / max(1, len(lesions)), 4)
        variants[label] = refine(raw[key], classes, config, priors)
    for label, maps in variants.items():
        keep = called if label == "product" and PRODUCT.localise.gate else np.ones(len(lesions), bool)
        rows = [(name, fm.localisation_row(cam, _mask(cam), m, every))
                for cam, (_, name, m, every), k in zip(maps, lesions, keep) if k]
        out[label] = fm.summarise(rows)
    out["product_scope"] = ("lesions the classifier calls (the gate makes no mask for the others)"
                            if PRODUCT.localise.gate else "all lesions")
    return out


def _mask(cam: np.ndarray) -> np.ndarray:
    return map_to_mask(cam, PRODUCT.mask)


def removal_set(truths: list[dict], labels: torch.Tensor, card, limit: int) -> list[tuple[int, list[str]]]:
    """Test images with a visible head lesion: (row, the head classes the product removes). Where
    the image has tail findings too, the product's default judge decides, as in a run: the rules
    (tasks/knowledge/rules.py) keep a head finding that shares a zone with a present tail finding,
    so that removing it does not take the tail lesion along. Images left with nothing to remove
    are skipped."""
    judge, out = RulesJudge(), []
    for i, truth in enumerate(truths):
        head = sorted(name for name, m in truth.items() if name in card.head and m.any())
        tail = present(labels[i].numpy(), card.labels, card.tail)
        remove = sorted(judge.decide(Question.of(head, tail)).remove) if head and tail else head
        if remove:
            out.append((i, remove))
    return out[:limit]


def product_removal(model, card, data, chosen, priors, fill, mask: MaskConfig = PRODUCT.mask,
                    rounds: int = PRODUCT.removal_rounds, seeds=None, target: float = PRODUCT.removal_target) -> Removal:
    """The product's removal of the chosen images' head classes (models/removal.py): its
    localisation, ``mask`` settings, ``rounds`` and ``target``, with ``fill`` (the product's DiT
    sampler); the images' other findings are kept, as in a run."""
    rows = [i for i, _ in chosen]
    remove = [[card.labels.index(n) for n in names] for _, names in chosen]
    return remove_lesions(model, data.images[rows], remove, seeds, fill, method=PRODUCT.cam_method, mask=mask,
                          localise=PRODUCT.localise, thresholds=card.thresholds, priors=priors, rounds=rounds,
                          target=target, keep=kept_classes(data.labels[rows].numpy(), remove))


def mask_tensor(masks: list[np.ndarray | None], shape) -> torch.Tensor:
    """(N, 1, H, W) float masks; an image with no mask (None: the product makes no sample) gets an empty one."""
    return torch.from_numpy(np.stack([m if m is not None else np.zeros(shape, bool) for m in masks])[:, None]
                            .astype(np.float32))


def mask_sources(model, card, test, truth, chosen, seeds, priors, fill) -> dict[str, list[np.ndarray | None]]:
    """Per image: the product's mask (its final union after the removal rounds; None when the
    product would quarantine the image), the first round's mask alone, the oracle mask and the
    random control (the product's mask moved at random)."""
    images = test.images[[i for i, _ in chosen]]
    removal = product_removal(model, card, test, chosen, priors, fill, seeds=seeds)
    first = product_removal(model, card, test, chosen, priors, fill, rounds=1, seeds=seeds) \
        if PRODUCT.removal_rounds > 1 else removal
    oracle = oracle_masks(truth, chosen, images.shape[-2:])
    cam = [m.mask if m.outcome == "ok" else None for m in removal.masks]
    random = [relocate(m, np.random.default_rng(s)) if m is not None else None for m, s in zip(cam, seeds)]
    rounds = dict(zip(removal.ok, removal.rounds))
    return {"cam": cam, "cam-first-round": [m.mask if m.outcome == "ok" else None for m in first.masks],
            "oracle": oracle, "random": random, "_outcomes": [m.outcome for m in removal.masks],
            "_rounds": [rounds.get(j) for j in range(len(chosen))]}


def oracle_masks(truth: list[dict], chosen, shape) -> list[np.ndarray]:
    """Per chosen image: the true masks of the classes it removes, united and grown 2 px."""
    out = []
    for i, names in chosen:
        union = np.zeros(shape, dtype=bool)
        for name in names:
            union |= truth[i][name]
        out.append(fm.tolerant(union))
    return out


def paste_fill(images: torch.Tensor, mask: torch.Tensor, donors: torch.Tensor) -> torch.Tensor:
    """The paste control: (N, 1, H, W) images with the masked pixels copied from ``donors`` (other
    patients' normal films, same shape) at the same place: real texture, someone else's anatomy."""
    if images.shape != mask.shape or donors.shape != images.shape:
        raise ValueError("images, mask and donors must have the same (N, 1, H, W) shape")
    return torch.where(mask > 0.5, donors, images)


def fills(images: torch.Tensor, masks: torch.Tensor, dit, scheduler, donors: torch.Tensor, seeds) -> dict:
    def gens():
        return [torch.Generator().manual_seed(s) for s in seeds]
    out = {"dit-noise-start": inpaint(dit, scheduler, images, masks, NOISE_START, gens()),
           "dit-harmonic-start": inpaint(dit, scheduler, images, masks, HARMONIC_START, gens())}
    same = [k for k, c in (("dit-noise-start", NOISE_START), ("dit-harmonic-start", HARMONIC_START))
            if c == PRODUCT.inpaint]
    out["dit"] = out[same[0]] if same else inpaint(dit, scheduler, images, masks, PRODUCT.inpaint, gens())
    return {**out,
            "harmonic": harmonic_fill(images, masks),
            "paste": paste_fill(images, masks, donors)}


def references(test, card, chosen, truth, size: int) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Per chosen image: the ideal (its render without the removed head findings) and, for each
    visible tail lesion, the ideal rendered without that tail finding too."""
    out = []
    for i, names in chosen:
        source = test.table.column("source_uri")[i].as_py()
        kept = np.nan_to_num(test.labels[i].numpy()).copy()
        for name in names:
            kept[card.labels.index(name)] = 0.0
        cleans = {}
        for k in np.nonzero(kept == 1.0)[0]:
            name = card.labels[k]
            if name in card.tail and name in truth[i] and truth[i][name].any():
                without = kept.copy()
                without[k] = 0.0
                cleans[name] = _replay(source, without, "nih", size)
        out.append((_replay(source, kept, "nih", size), cleans))
    return out


def product_check(model, card, test, chosen, masks, results) -> list[bool | None]:
    """Per chosen image: does the product's removal check (tasks.augment.verdict, the image-quality
    filters aside) accept ``results``? None where the product made no sample."""
    images = test.images[[i for i, _ in chosen]]
    before, after = predict_probs(model, images), predict_probs(model, results)
    out = []
    for j, (i, names) in enumerate(chosen):
        tail = present(test.labels[i].numpy(), card.labels, card.tail)
        out.append(None if masks[j] is None else verdict(
            tuple(names), tail, card.labels, before[j], after[j], card.thresholds, PRODUCT.tail_margin, 0.0,
            float("inf")) == "ok")
    return out


def outcomes(test, card, judge_card, chosen, truth, refs, before, after, masks, results,
             verified: list[bool | None] | None = None) -> dict:
    """Removal (signed, judge, absolute) of each head lesion and retention of each tail lesion;
    ``before`` / ``after`` are the judge's probabilities on the chosen images and on ``results``;
    ``verified`` (``product_check``) adds the same rates over the rows the product accepts."""
    verified = verified or [None] * len(chosen)
    findings = card.labels
    thresholds = np.array(judge_card.thresholds)
    head_rows, tail_rows, unmasked = [], [], 0
    for j, (i, names) in enumerate(chosen):
        if masks[j] is None:  # the product makes no sample for this image: its lesions stay unremoved
            unmasked += len(names)
            continue
        original, new = test.images[i, 0].numpy(), results[j, 0].numpy()
        ideal, cleans = refs[j]
        for name in names:
            r = fm.removal(original, new, ideal, truth[i][name])
            if r is None:
                continue
            k = findings.index(name)
            called = before[j, k] >= thresholds[k]
            head_rows.append({**r, "class": name, "judge": bool(after[j, k] < thresholds[k]) if called else None,
                              "coverage": float((masks[j] & truth[i][name]).sum() / truth[i][name].sum()),
                              "verified": verified[j]})
        for name, clean in cleans.items():
            k = findings.index(name)
            called = before[j, k] >= thresholds[k]
            tail_rows.append({"class": name, "signed": fm.retention(new, ideal, clean, truth[i][name]),
                              "judge": bool(after[j, k] >= thresholds[k]) if called else None,
                              "verified": verified[j]})
    accepted_head, accepted_tail = ([r for r in rows if r["verified"]] for rows in (head_rows, tail_rows))
    return {"head_lesions": len(head_rows),
            "removal_signed": fm.rate([r["signed"] for r in head_rows]),
            "removal_judge": fm.rate([r["judge"] for r in head_rows]),
            "removal_absolute": fm.rate([r["absolute"] for r in head_rows]),
            "removal_signed_end_to_end": fm.rate([r["signed"] for r in head_rows] + [False] * unmasked),
            "head_lesions_without_mask": unmasked,
            "coverage_mean": fm.rate([r["coverage"] for r in head_rows]),
            "per_class_signed": {c: fm.rate([r["signed"] for r in head_rows if r["class"] == c])
                                 for c in sorted({r["class"] for r in head_rows})},
            "tail_lesions": len(tail_rows),
            "retention_signed": fm.rate([r["signed"] for r in tail_rows]),
            "retention_judge": fm.rate([r["judge"] for r in tail_rows]),
            "accepted_images": sum(1 for v in verified if v), "checked_images": sum(1 for v in verified if v is not None),
            "accepted_head_lesions": len(accepted_head),
            "accepted_removal_signed": fm.rate([r["signed"] for r in accepted_head]),
            "accepted_removal_judge": fm.rate([r["judge"] for r in accepted_head]),
            "accepted_tail_lesions": len(accepted_tail),
            "accepted_retention_signed": fm.rate([r["signed"] for r in accepted_tail])}


def overlay(image: np.ndarray, mask: np.ndarray | None, colour=(255, 60, 60)) -> np.ndarray:
    rgb = np.repeat((image.clip(0, 1) * 255).astype(np.uint8)[..., None], 3, axis=-1)
    if mask is not None:
        rgb[mask] = (0.5 * rgb[mask] + 0.5 * np.array(colour)).astype(np.uint8)
    return rgb


def grid(rows: list[list[np.ndarray]]) -> bytes:
    """Rows of equally sized RGB tiles -> one PNG."""
    sheet = np.concatenate([np.concatenate(r, axis=1) for r in rows], axis=0)
    buffer = io.BytesIO()
    Image.fromarray(sheet).save(buffer, format="PNG")
    return buffer.getvalue()


def run_size(size: int, args) -> dict:
    started = time.perf_counter()
    prep = prepare(size, args.n, args.dit_steps, args.dit_conditioning, args.dit_prediction)
    model, _, card = load_checkpoint(store.read_bytes(prep["main"]["classifier"]))
    judge, _, judge_card = load_checkpoint(store.read_bytes(prep["judge"]["classifier"]))
    dit, dit_config, _ = load_dit(store.read_bytes(prep["dit"]["uri"]))
    scheduler = build_scheduler(dit_config)
    ds = prep["main"]["dataset"]
    test = load_tensors(ds, splits=("test",), columns=("lesion_masks", "source_uri"))
    train = load_tensors(ds, splits=("train",), columns=("lesion_masks",))
    result = {"size": size, "stem": stem(size, args.dit_conditioning),
              "args": {"n": args.n, "images": args.images, "dit_steps": args.dit_steps,
                       "dit_conditioning": args.dit_conditioning, "dit_prediction": args.dit_prediction,
                       "no_variants": args.no_variants},
              "prepared": prep, "head": card.head, "tail": card.tail,
              "product": {"cam_method": PRODUCT.cam_method, "localise": asdict(PRODUCT.localise),
                          "mask": asdict(PRODUCT.mask), "inpaint": asdict(PRODUCT.inpaint),
                          "removal_rounds": PRODUCT.removal_rounds, "removal_target": PRODUCT.removal_target}}
    truth = lesion_masks(test.table)  # decoded once for every measure below
    result["localisation"] = localisation(model, card, test, train, truth)
    print(json.dumps({k: v.get("_all", v) if isinstance(v, dict) else v for k, v in result["localisation"].items()}),
          flush=True)

    chosen = removal_set(truth, test.labels, card, args.images)
    seeds = [1000 + i for i, _ in chosen]
    priors = priors_of(card, train)
    product_fill = dit_fill(dit, scheduler, PRODUCT.inpaint)
    masks = mask_sources(model, card, test, truth, chosen, seeds, priors, product_fill)
    refs = references(test, card, chosen, truth, size)
    result["cam_mask_outcomes"] = {o: masks["_outcomes"].count(o) for o in set(masks["_outcomes"])}
    result["cam_mask_rounds"] = {r: masks["_rounds"].count(r) for r in sorted({r for r in masks["_rounds"] if r})}
    normals = load_tensors(ds, splits=("val", "test"), normal_only=True)
    images = test.images[[i for i, _ in chosen]]
    before = predict_probs(judge, images)
    donors = normals.images[torch.arange(len(chosen)) % len(normals)]
    removal, filled_by = {}, {}
    for source in ("cam", "cam-first-round", "oracle", "random"):
        mask_t = mask_tensor(masks[source], images.shape[-2:])
        made = ({"dit": product_fill(images, mask_t, seeds)} if source == "cam-first-round"
                else fills(images, mask_t, dit, scheduler, donors, seeds))
        for fill, results in made.items():
            after = predict_probs(judge, results)
            removal[f"{source}/{fill}"] = outcomes(
                test, card, judge_card, chosen, truth, refs, before, after, masks[source], results,
                product_check(model, card, test, chosen, masks[source], results))
            filled_by[(source, fill)] = results
            print(source, fill, json.dumps({k: v for k, v in removal[f"{source}/{fill}"].items()
                                            if not isinstance(v, dict)}), flush=True)
    result["removal"] = removal
    result["mask_variants"] = {} if args.no_variants else mask_variants(
        model, card, judge, judge_card, product_fill, test, truth, chosen, seeds, priors, refs, before, MASK_VARIANTS)
    result["retention"] = retention(model, card, judge, judge_card, product_fill, priors, size, args.n)
    print("retention", json.dumps({k: v for k, v in result["retention"].items() if not isinstance(v, dict)}), flush=True)
    free = sample(dit, scheduler, 128, size, steps=50, generator=torch.Generator().manual_seed(0))
    held_out = normals.images[:256]
    half = len(held_out) // 2  # the floor: two halves of real held-out normals
    result["generator"] = {"free_samples_vs_held_out_normals": fm.distances(judge, free, held_out),
                           "held_out_normals_split_halves": fm.distances(judge, held_out[:half], held_out[half:])}
    ideal = torch.stack([torch.from_numpy(reference)[None] for reference, _ in refs])
    for fill in ("dit", "dit-noise-start", "dit-harmonic-start", "harmonic", "paste"):
        result["generator"][f"oracle/{fill}_vs_lesion_free_renders"] = fm.distances(judge, filled_by[("oracle", fill)], ideal)
    result["seconds"] = round(time.perf_counter() - started, 1)
    write_grids(result["stem"], test, model, card, chosen, masks, filled_by, ideal, priors)
    (RESULTS / f"{result['stem'].replace('fidelity', 'dit')}_samples.png").write_bytes(grid([[overlay(x[0].numpy(), None) for x in free[r:r + 8]]
                                                           for r in range(0, 32, 8)]))
    return result


def removal_outcomes(model, card, judge, judge_card, fill, data, truth, chosen, seeds, priors, refs, before,
                     mask: MaskConfig = PRODUCT.mask, rounds: int = PRODUCT.removal_rounds,
                     target: float = PRODUCT.removal_target) -> dict:
    """``outcomes`` of the product's removal (``product_removal``) of the chosen images of ``data``."""
    images = data.images[[i for i, _ in chosen]]
    removal = product_removal(model, card, data, chosen, priors, fill, mask, rounds, seeds, target)
    masks = [m.mask if m.outcome == "ok" else None for m in removal.masks]
    results = images.clone()
    results[removal.ok] = removal.generated
    return outcomes(data, card, judge_card, chosen, truth, refs, before, predict_probs(judge, results), masks,
                    results, product_check(model, card, data, chosen, masks, results))


def mask_variants(model, card, judge, judge_card, fill, test, truth, chosen, seeds, priors, refs, before,
                  variants) -> dict:
    """The product's removal with its masks grown by other amounts and other numbers of rounds."""
    out = {}
    for grow, rounds, target in variants:
        key = f"{grow} px, {rounds} round{'s' if rounds > 1 else ''}" + (f", target {target:g}" if rounds > 1 else "")
        out[key] = removal_outcomes(model, card, judge, judge_card, fill, test, truth, chosen, seeds, priors, refs,
                                    before, replace(PRODUCT.mask, dilate_px=grow), rounds, target)
        print(key, json.dumps({k: v for k, v in out[key].items() if not isinstance(v, dict)}), flush=True)
    return out


def retention_set(truths: list[dict], labels: torch.Tensor, card) -> list[tuple[int, list[str]]]:
    """The images of ``removal_set`` where a tail lesion is visible beside what the product removes."""
    return [(i, names) for i, names in removal_set(truths, labels, card, len(truths))
            if any(name in card.tail and m.any() for name, m in truths[i].items())]


def retention(model, card, judge, judge_card, fill, priors, size: int, n: int) -> dict:
    """Tail retention where there are enough tail lesions to measure it: the test split holds a
    dozen beside a head removal. A phantom of another seed (RETENTION_SEED, which no model here
    was trained on), every image where the product removes a head class beside a visible tail
    lesion, the product's removal; ``outcomes`` of it."""
    uri = phantom(str(tailforge_home() / "bench" / f"phantom{size}-{n}-s{RETENTION_SEED}"), n, size, RETENTION_SEED)
    data = load_tensors(uri, columns=("lesion_masks", "source_uri"))
    truth = lesion_masks(data.table)
    chosen = retention_set(truth, data.labels, card)
    images = data.images[[i for i, _ in chosen]]
    refs = references(data, card, chosen, truth, size)
    seeds, before = [2000 + i for i, _ in chosen], predict_probs(judge, images)
    out = removal_outcomes(model, card, judge, judge_card, fill, data, truth, chosen, seeds, priors, refs, before)
    oracle = oracle_masks(truth, chosen, images.shape[-2:])
    results = fill(images, mask_tensor(oracle, images.shape[-2:]), seeds)
    out["oracle"] = outcomes(data, card, judge_card, chosen, truth, refs, before, predict_probs(judge, results), oracle,
                             results, product_check(model, card, data, chosen, oracle, results))
    return {"seed": RETENTION_SEED, "images": len(chosen), **out}


def variant_table(variants: dict, first: str = "growth, rounds, target") -> list[str]:
    lines = [f"| {first} | head lesions | removal signed | end to end | removal judge | lesion covered "
             "| tail lesions | retention signed | retention judge | accepted images | accepted: removal signed "
             "| accepted: retention signed (tail lesions) |", "|---" * 12 + "|"]
    for key, o in variants.items():
        lines.append(f"| {key} | {o['head_lesions']} | {o['removal_signed']} | {o['removal_signed_end_to_end']} | "
                     f"{o['removal_judge']} | {o['coverage_mean']} | {o['tail_lesions']} | "
                     f"{o['retention_signed']} | {o['retention_judge']} | {o['accepted_images']} of "
                     f"{o['checked_images']} | {o['accepted_removal_signed']} | "
                     f"{o['accepted_retention_signed']} ({o['accepted_tail_lesions']}) |")
    return lines


def write_grids(name, test, model, card, chosen, masks, filled_by, ideal, priors) -> None:
    """Per head class, up to 3 images: image | map | CAM mask | DiT on CAM mask | oracle mask |
    DiT on oracle | harmonic on oracle | lesion-free render."""
    rows, per_class = [], {}
    for j, (i, names) in enumerate(chosen):
        if masks["cam"][j] is None or per_class.get(names[0], 0) >= 3:
            continue
        per_class[names[0]] = per_class.get(names[0], 0) + 1
        cam = class_maps(model, test.images[i:i + 1], [card.labels.index(names[0])], PRODUCT.localise,
                         PRODUCT.cam_method, priors)[0]
        image = test.images[i, 0].numpy()
        heat = np.stack([cam, cam * 0.3, 1 - cam], axis=-1)
        rows.append([overlay(image, None), (heat * 255).astype(np.uint8), overlay(image, masks["cam"][j]),
                     overlay(filled_by[("cam", "dit")][j, 0].numpy(), None), overlay(image, masks["oracle"][j]),
                     overlay(filled_by[("oracle", "dit")][j, 0].numpy(), None),
                     overlay(filled_by[("oracle", "harmonic")][j, 0].numpy(), None), overlay(ideal[j, 0].numpy(), None)])
    if rows:
        (RESULTS / f"{name}_grid.png").write_bytes(grid(rows))


def markdown(r: dict) -> str:
    loc = r["localisation"]
    lines = [f"# Sample fidelity on the phantom at {r['size']} px", "",
             f"Commit `{commit()}`; machine: {machine()['cpu']}, {machine()['cores']} cores, no GPU. "
             f"Command: `python -m benchmarks.fidelity --sizes {r['size']} --n {r['args']['n']} "
             f"--images {r['args']['images']} --dit-steps {r['args']['dit_steps']}"
             f"{'' if r['args']['dit_conditioning'] == 'none' else ' --dit-conditioning ' + r['args']['dit_conditioning']}"
             f"{' --dit-prediction epsilon' if r['args'].get('dit_prediction') == 'epsilon' else ''}"
             f"{' --no-variants' if r['args'].get('no_variants') else ''}`"
             f". {r['seconds']} s.", "",
             f"Head classes: {', '.join(r['head'])}. {loc['lesions']} visible head lesions in the test split.", "",
             "## Localisation (head lesions, test split)", "",
             "| map | pointing game | IoU | lesion covered | mask outside lesions |", "|---|---|---|---|---|",
             f"| uniform random point | {loc['random_point']['_all']} | | | |"]
    for label, s in loc.items():
        if isinstance(s, dict) and "_all" in s and label != "random_point":
            a = s["_all"]
            lines.append(f"| {label} | {a['pointing_game']} | {a['iou']} | {a['coverage']} | {a['outside']} |")
    classes = sorted(k for k in loc["product"] if not k.startswith("_"))
    lines += ["", "Pointing game per class:", "", "| map | " + " | ".join(classes) + " |",
              "|---" * (len(classes) + 1) + "|"]
    for label in ("random_point", "class location prior", "product"):
        s = loc[label]
        cells = [str(s[c] if label == "random_point" else s.get(c, {}).get("pointing_game")) for c in classes]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    rounds, target = r["product"].get("removal_rounds", 1), r["product"].get("removal_target", 1.0)
    lines += ["", f"CAM mask outcomes on the removal set: {r['cam_mask_outcomes']} "
                  "(not_detected: the classifier does not call a class to remove, so the gate makes no mask; the product "
                  "quarantines such images, and empty or too-large masks, and makes no sample from them).", "",
              f"Removal rounds (up to {rounds}; a round re-localises on the result while a removed class's "
              f"probability is at least {target:g} x its threshold, models/removal.py): images by the rounds their "
              f"final mask holds: "
              f"{r.get('cam_mask_rounds', {})}. `cam` is the product's final mask; `cam-first-round` its first "
              "round's mask alone, filled by the product's DiT; the other fills on `cam` use the final mask."
              + (f" Every round's mask leaves out where the maps of the findings the image keeps point (their maps "
                 f"on the original >= {r['product']['mask']['protect']:g} x their maximum, where no removed class's "
                 f"map is stronger; models/cam.protected_region)." if r["product"]["mask"].get("protect") else ""),
              "",
              "## Removal and retention", "",
              "Removal `signed`: the lesion's mean signed contrast against the lesion-free render of the same "
              "patient falls to at most half; `judge`: an independent classifier (other phantom seed) that called "
              "the class before no longer does; `absolute`: the old criterion (mean |difference| halves). "
              "Retention: a tail lesion keeps at least half its signed contrast / the judge still calls it.", "",
              "Rates are over the lesions of images that got a mask; `end to end` also counts the lesions of "
              "images the product made no sample from as not removed. `accepted`: the rows the product's removal "
              "check accepts (its classifier no longer calls a removed class and still calls each tail class it "
              "called, within the margin; tasks/augment.verdict, image-quality filters aside), which are the rows "
              "fine-tuning reads.", "",
              "| masks / fill | head lesions | removal signed | end to end | removal judge | removal absolute "
              "| lesion covered | tail lesions | retention signed | retention judge | accepted images "
              "| accepted: removal signed | accepted: retention signed (tail lesions) |", "|---" * 13 + "|"]
    for key, o in r["removal"].items():
        lines.append(f"| {key} | {o['head_lesions']} | {o['removal_signed']} | {o['removal_signed_end_to_end']} | "
                     f"{o['removal_judge']} | {o['removal_absolute']} | {o['coverage_mean']} | {o['tail_lesions']} | "
                     f"{o['retention_signed']} | {o['retention_judge']} | {o.get('accepted_images')} of "
                     f"{o.get('checked_images')} | {o.get('accepted_removal_signed')} | "
                     f"{o.get('accepted_retention_signed')} ({o.get('accepted_tail_lesions')}) |")
    if r.get("mask_variants"):
        lines += (["", f"### Other mask growths and rounds (the product's DiT; the product: "
                       f"{r['product']['mask']['dilate_px']} px, {rounds} rounds, target {target:g})", ""]
                  + variant_table(r["mask_variants"]))
    if r.get("retention"):
        t = r["retention"]
        lines += ["", f"### Tail retention on a phantom no model here was trained on (seed {t['seed']})", "",
                  f"The removal set above holds few tail lesions beside a head removal (tail findings are rare, "
                  f"and the rules judge keeps a head finding that shares a zone with one). Here: every one of "
                  f"{r['args']['n']} images of another phantom seed where the product removes a head class beside "
                  f"a visible tail lesion ({t['images']} images), with the product's removal as above.", ""]
        lines += variant_table({"product": t, **({"oracle masks (the true head lesions, grown 2 px)": t["oracle"]}
                                                 if t.get("oracle") else {})}, "masks")
        lines += ["", "The oracle row fills the true head-lesion masks with the same DiT: a tail lesion that lies "
                      "under a head lesion is lost even then, so it bounds what any mask can keep."]
    lines += ["", "## Generator fidelity (judge-classifier features)", "", "| comparison | FID | KID | n |",
              "|---|---|---|---|"]
    for key, d in r["generator"].items():
        lines.append(f"| {key} | {d['fid']} | {d['kid']} | {d['n']} |")
    lines += ["", f"Grids: `{r['stem']}_grid.png` (image, map, CAM mask, DiT on CAM mask, oracle mask, "
                  f"DiT on oracle, harmonic on oracle, lesion-free render), "
                  f"`{r['stem'].replace('fidelity', 'dit')}_samples.png`.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--n", type=int, default=3000, help="phantom images per dataset")
    parser.add_argument("--images", type=int, default=96, help="test images in the removal set")
    parser.add_argument("--dit-steps", type=int, default=2000)
    parser.add_argument("--dit-conditioning", choices=["none", "mask"], default="none",
                        help="none: the plain DiT joined RePaint-style; mask: the inpainting DiT (models/dit.py)")
    parser.add_argument("--dit-prediction", choices=["sample", "epsilon"], default="sample",
                        help="what the DiT predicts: the clean image (default) or the noise (models/dit.py)")
    parser.add_argument("--no-variants", action="store_true",
                        help="skip the other mask growths and rounds (MASK_VARIANTS; about 25 minutes at 128 px)")
    args = parser.parse_args()
    for size in args.sizes:
        result = run_size(size, args)
        path = save(result["stem"], result)
        (RESULTS / f"{result['stem']}.md").write_text(markdown(result))
        print(f"written: {path} and {result['stem']}.md", flush=True)


def stem(size: int, conditioning: str) -> str:
    """Result file names: fidelity_<size>, with a suffix for the inpainting DiT."""
    return f"fidelity_{size}" + ("" if conditioning == "none" else "_inpainting_dit")


if __name__ == "__main__":
    main()
