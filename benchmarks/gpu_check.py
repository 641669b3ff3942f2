"""The GPU session's one command (issue 17): does the CUDA path agree with the CPU path, and how
fast is the product's model work on the GPU?

    python -m benchmarks.gpu_check --out DIR        # on a host where torch sees CUDA; refuses otherwise

It imports models/, the phantom and the product's augment settings (no Prefect or S3), so on
a lent machine only the wheels ``make gpu-check-wheels`` downloads into .whl must travel (docs/operations.md,
"Where the models compute"). It writes DIR/gpu_check.json and DIR/gpu_check.md after every section,
so a run stopped by its time limit keeps the sections it finished.

1. **Agreement.** A classifier and a DiT trained briefly on CUDA (the product's trainers, which
   train where the model is), copied to the CPU; the product's lesion removal
   (models.removal.remove_lesions with the defaults of tasks/augment.AugmentSettings) on the
   same phantom films on both. Reported: the classifier's largest
   probability gap, mask IoU, how many images got a mask on each, and pixels changed outside the
   masks (must be 0 on both: the fill keeps every known pixel).
2. **Throughput** at 64, 128 and 256 px: classifier training and inference (ResNet-18, float32 as
   the product trains it), the infill class maps the product masks with, DiT training, and
   inpainting with the product's sampler (AugmentSettings' inpaint settings). Each with images/s and, where
   the work is matrix products, its FLOP/s (torch.utils.flop_counter) as a share of the GPU's
   bf16 dense peak and of a measured 8192^3 bf16 matrix product.
   Inpainting again through the engine (models/engine.py): 512 films in one task, model
   batches sized to the device, the forward compiled; and the same films as four tasks' fills,
   one after another (the control) and at once (threads), whose calls the engine's pool merges
   (started together, so in step; tasks at different steps are not timed).
3. **Generator presets** (tiny, small, base) at 128 and 256 px: training steps/s and free
   sampling images/s, with ``models.dit.flops_per_call`` as a share of the bf16 peak.
4. **Classifier presets** (tiny, small, base: models.configs.CLASSIFIER_PRESETS) at 256 px:
   training and inference images/s in bf16, a training step's FLOPs as a share of the peak.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import RESULTS, commit, machine
from models.cam import raw_maps
from models.classifier import ClassifierConfig, build_classifier
from models.configs import EngineConfig
from models.device import describe_device
from models.engine import use_engine
from models.dit import DiTConfig, DiTTrainConfig, build_scheduler, diffusion_loss, to_model_range, train_dit
from models.inpaint import InpaintConfig, inpaint
from models.metrics import tune_thresholds
from models.removal import dit_fill, remove_lesions
from models.training import TrainConfig, fit_classifier, predict_probs
from tasks.augment import AugmentSettings
from tasks.phantom import phantom_images

# dense bf16 tensor-core peak, TFLOP/s, from the vendors' data sheets (SXM parts)
BF16_PEAK = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0}
# the sampler through the engine, timed three ways: the key in the results and the row in the report
ENGINE_RUNS = {"engine": "inpaint, engine (512 films, model batches, compiled)",
               "apart": "inpaint, engine, 4 tasks of a quarter each, one after another",
               "pooled": "inpaint, engine, the 4 at once"}
PRODUCT = AugmentSettings()  # the augment defaults: map method, masks, removal rounds, sampler


def films(n: int, size: int, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    rows = list(phantom_images(n, size, seed))
    return (torch.from_numpy(np.stack([r.image for r in rows])[:, None]).float() / 255.0,
            torch.from_numpy(np.stack([r.labels for r in rows])))


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def cuda_seconds(fn, repeats: int = 3) -> float:
    """Median wall seconds of ``fn`` after one warm-up, synchronised."""
    fn()
    sync()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - start)
    return float(np.median(out))


def flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def matmul_tflops(device: torch.device, side: int = 8192) -> float:
    a = torch.randn(side, side, device=device, dtype=torch.bfloat16)
    return 2 * side ** 3 / cuda_seconds(lambda: a @ a, 10) / 1e12


def dit_config(size: int) -> DiTConfig:  # 256 tokens at every size, as the phantom experiment uses
    return DiTConfig(image_size=size, patch_size=size // 16, depth=6, num_heads=4, head_dim=32, prediction="sample")


def agreement(device: torch.device, quick: bool = False) -> dict:
    images, labels = films(640, 64)
    classifier = build_classifier(ClassifierConfig("resnet18", labels.shape[1], 64)).to(device)
    fit_classifier(classifier, images[:512], labels[:512], TrainConfig(epochs=1 if quick else 4, batch_size=64))
    dit, ema, _ = train_dit(images[:512][(labels[:512] == 0).all(dim=1)], dit_config(64),
                            DiTTrainConfig(steps=10 if quick else 400, batch_size=32, warmup_steps=5), device=device)
    ema.copy_to(dit)
    test, truth = images[512:576], labels[512:576]
    head = int(labels.sum(0).argmax())  # the commonest finding: the one to remove where present
    thresholds = [float(t) for t in tune_thresholds(predict_probs(classifier, images[576:]), labels[576:].numpy())]
    rows = [i for i in range(len(test)) if truth[i, head] == 1][:4 if quick else 16]
    out = {"images": len(rows), "finding": head}
    if not rows:
        return {**out, "ok": False, "why": "no test film holds the commonest finding"}
    results = {}
    for name, dev in (("cuda", device), ("cpu", torch.device("cpu"))):
        net, gen = classifier.to(dev).eval(), dit.to(dev).eval()
        probs = predict_probs(net, test[rows])
        removal = remove_lesions(net, test[rows], [[head]] * len(rows), list(range(len(rows))),
                                 dit_fill(gen, build_scheduler(dit_config(64)), PRODUCT.inpaint),
                                 method=PRODUCT.cam_method, mask=PRODUCT.mask, localise=PRODUCT.localise,
                                 thresholds=thresholds, rounds=PRODUCT.removal_rounds,
                                 target=PRODUCT.removal_target, probs=probs)
        outside = [int(((removal.generated[k] != test[rows][i]) & ~torch.from_numpy(removal.masks[i].mask)).sum())
                   for k, i in enumerate(removal.ok)]
        results[name] = (probs, removal, outside)
    (pg, rg, og), (pc, rc, oc) = results["cuda"], results["cpu"]
    both = [i for i in rg.ok if i in rc.ok]
    iou = [float((rg.masks[i].mask & rc.masks[i].mask).sum() / max(1, (rg.masks[i].mask | rc.masks[i].mask).sum()))
           for i in both]
    return {**out, "probability_gap_max": float(np.abs(pg - pc).max()), "masked_cuda": len(rg.ok),
            "masked_cpu": len(rc.ok), "mask_iou_mean": float(np.mean(iou)) if iou else None,
            "changed_outside_masks_cuda": int(sum(og)), "changed_outside_masks_cpu": int(sum(oc)),
            "ok": len(rg.ok) > 0 and sum(og) == 0 and sum(oc) == 0 and bool(np.isfinite(pg).all())}


def throughput(size: int, device: torch.device, peak: float | None, ceiling: float, quick: bool = False) -> dict:
    images, labels = films(32 if quick else 256, size)
    x = images.to(device)
    k = labels.shape[1]
    net = build_classifier(ClassifierConfig("resnet18", k, size)).to(device)
    train = TrainConfig(epochs=1, batch_size=128)
    out: dict = {"size": size}
    batch = min(128, len(images))

    def epoch():  # the product's trainer: one epoch, batches moved from the CPU as in a run
        fit_classifier(net, images, labels, train)

    def one_step():  # one batch forward and backward in training mode, for its FLOPs
        net.train()
        nn.functional.binary_cross_entropy_with_logits(net(x[:batch]), labels[:batch].to(device)).backward()

    out["classifier_train_img_s"] = len(images) / cuda_seconds(epoch)
    out["classifier_train_tflops"] = flops(one_step) / (batch / out["classifier_train_img_s"]) / 1e12

    @torch.no_grad()
    def infer():
        net.eval()(x)

    out["classifier_infer_img_s"] = len(x) / cuda_seconds(infer)
    out["classifier_infer_tflops"] = flops(infer) / (len(x) / out["classifier_infer_img_s"]) / 1e12
    n_maps = 2 if quick else 16
    out["infill_maps_img_s"] = n_maps / cuda_seconds(
        lambda: raw_maps(net.eval(), images[:n_maps], [0] * n_maps, PRODUCT.localise, PRODUCT.cam_method), 1)
    config = dit_config(size)
    dit = train_dit(images, config, DiTTrainConfig(steps=1, batch_size=8, warmup_steps=1), device=device)[0]
    scheduler, gen = build_scheduler(config), torch.Generator().manual_seed(0)
    data = to_model_range(x[:32])
    dit.train()

    def dit_step():
        diffusion_loss(dit, scheduler, data, gen).backward()

    out["dit_train_steps_s"] = 1 / cuda_seconds(dit_step, 10)
    out["dit_train_tflops"] = flops(dit_step) * out["dit_train_steps_s"] / 1e12
    dit.eval()
    n_fill = 4 if quick else 64
    mask = torch.zeros_like(images[:n_fill])
    mask[..., size // 4: size // 2, size // 4: size // 2] = 1
    config = InpaintConfig(steps=2, jump_length=1, resample=1) if quick else PRODUCT.inpaint

    def fill():
        inpaint(dit, scheduler, images[:n_fill], mask, config, [torch.Generator().manual_seed(i) for i in range(n_fill)])

    out["inpaint_img_s"] = n_fill / cuda_seconds(fill, 2)
    out["inpaint_tflops"] = flops(fill) / (n_fill / out["inpaint_img_s"]) / 1e12
    # the same sampler through the engine: one task of 512 films, model batches sized to the
    # device and a compiled forward (the CPU smoke test: 2-row chunks, not compiled)
    n_engine, engine = (4, EngineConfig(rows=2)) if quick else (512, EngineConfig(compile=True))
    films_engine = images.repeat((n_engine + len(images) - 1) // len(images), 1, 1, 1)[:n_engine]
    mask_engine = mask[:1].expand(n_engine, -1, -1, -1)

    def fill_engine():
        inpaint(dit, scheduler, films_engine, mask_engine, config,
                [torch.Generator().manual_seed(i) for i in range(n_engine)])

    def task(k: int) -> None:  # a quarter of the films: one of four tasks' fills
        inpaint(dit, scheduler, films_engine[k::4], mask_engine[k::4], config,
                [torch.Generator().manual_seed(i) for i in range(k, n_engine, 4)])

    def fill_apart():  # the control: the four tasks one after another
        for k in range(4):
            task(k)

    def fill_pooled():  # the four at once (threads): the pool merges their calls
        with ThreadPoolExecutor(4) as tasks:
            for done in [tasks.submit(task, k) for k in range(4)]:
                done.result()

    use_engine(dit, engine)
    for name, fn in zip(ENGINE_RUNS, (fill_engine, fill_apart, fill_pooled)):  # in ENGINE_RUNS' order
        out[f"inpaint_{name}_img_s"] = n_engine / cuda_seconds(fn, 2)
        out[f"inpaint_{name}_tflops"] = out["inpaint_tflops"] / out["inpaint_img_s"] * out[f"inpaint_{name}_img_s"]
    use_engine(dit, None)
    for key in [k for k in out if k.endswith("_tflops")]:
        out[key.replace("_tflops", "_share_of_peak")] = out[key] / peak if peak else None
        out[key.replace("_tflops", "_share_of_matmul")] = out[key] / ceiling
    return out


def presets(size: int, device: torch.device, peak: float | None, quick: bool = False,
            names: list[str] | None = None) -> list[dict]:
    """Each generator preset (models/dit.py PRESETS) at ``size`` px: training steps/s on a batch
    of 32 and free sampling images/s (50 DDIM steps, batch 64), with the FLOPs ``flops_per_call``
    counts (a training step ~ 3 calls per image: forward and backward) as a share of the peak."""
    from models.dit import PRESETS, build_dit, flops_per_call, preset_sizes
    from models.sampling import sample

    rows = []
    for name in names or list(PRESETS):
        config = DiTConfig(image_size=size, prediction="sample", **preset_sizes(name, size))
        per_call = flops_per_call(config)
        torch.manual_seed(0)
        dit, scheduler = build_dit(config).to(device), build_scheduler(config)
        batch, n, steps = (4, 2, 2) if quick else (32, 64, 50)
        data, gen = to_model_range(torch.rand(batch, 1, size, size, device=device)), torch.Generator().manual_seed(0)
        optimiser = torch.optim.AdamW(dit.parameters(), lr=1e-4)

        def train_step():
            dit.train()
            optimiser.zero_grad(set_to_none=True)
            diffusion_loss(dit, scheduler, data, gen).backward()
            optimiser.step()

        steps_s = 1 / cuda_seconds(train_step, 2 if quick else 10)
        images_s = n / cuda_seconds(lambda: sample(dit.eval(), scheduler, n, size, steps, torch.Generator()), 1)
        train_tflops, sample_tflops = 3 * batch * per_call * steps_s / 1e12, steps * per_call * images_s / 1e12
        rows.append({"preset": name, "size": size, "parameters": sum(p.numel() for p in dit.parameters()),
                     "gflop_per_call": per_call / 1e9, "train_steps_s": steps_s, "train_batch": batch,
                     "train_share_of_peak": train_tflops / peak if peak else None, "sample_img_s": images_s,
                     "sample_share_of_peak": sample_tflops / peak if peak else None})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def classifier_presets(size: int, device: torch.device, peak: float | None, quick: bool = False) -> list[dict]:
    """Each classifier preset (models.configs.CLASSIFIER_PRESETS) at ``size`` px: training
    images/s (bf16 autocast on CUDA, channels_last, batch 64) and inference images/s, with the
    FLOPs FlopCounterMode counts for a step as a share of the peak."""
    from models.configs import CLASSIFIER_PRESETS

    rows = []
    for name, backbone in CLASSIFIER_PRESETS.items():
        torch.manual_seed(0)
        net = build_classifier(ClassifierConfig(backbone, 14, size)).to(device, memory_format=torch.channels_last)
        batch = 2 if quick else 64
        x, y = torch.rand(batch, 1, size, size, device=device), torch.zeros(batch, 14, device=device)
        optimiser = torch.optim.AdamW(net.parameters(), lr=1e-4)

        def train_step():
            net.train()
            optimiser.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = nn.functional.binary_cross_entropy_with_logits(net(x).float(), y)
            loss.backward()
            optimiser.step()

        @torch.inference_mode()
        def infer():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                net.eval()(x)

        train_s, infer_s = cuda_seconds(train_step, 2 if quick else 10), cuda_seconds(infer, 2 if quick else 10)
        step_flops = flops(train_step)
        rows.append({"preset": name, "backbone": backbone, "size": size,
                     "parameters": sum(p.numel() for p in net.parameters()),
                     "gflop_per_image_train": step_flops / batch / 1e9, "train_img_s": batch / train_s,
                     "train_share_of_peak": step_flops / train_s / 1e12 / peak if peak else None,
                     "infer_img_s": batch / infer_s})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown(result: dict) -> str:
    a = result["agreement"]
    lines = [f"# GPU check\n\nCommit `{result['commit']}`, {result['device']}; bf16 dense peak "
             f"{result['bf16_peak_tflops']} TFLOP/s (data sheet), 8192^3 bf16 matmul measured "
             f"{result['matmul_tflops']:.0f} TFLOP/s. Command: `python -m benchmarks.gpu_check`.\n",
             "## CUDA against CPU (same weights, the product's removal)\n",
             f"Not compared: {a['why']}.\n" if "why" in a else
             f"{a['images']} films, finding {a['finding']} removed: masked {a['masked_cuda']} on CUDA, "
             f"{a['masked_cpu']} on the CPU; mask IoU {a['mask_iou_mean']}; largest probability gap "
             f"{a['probability_gap_max']:.2e}; pixels changed outside the masks {a['changed_outside_masks_cuda']} / "
             f"{a['changed_outside_masks_cpu']}. {'Agrees.' if a['ok'] else '**Does not agree.**'}\n",
             "## Throughput\n", "| px | stage | images/s (steps/s) | TFLOP/s | share of bf16 peak | share of matmul |",
             "|---|---|---|---|---|---|"]
    def rate_row(row: dict, label: str, stage: str, rate: str = "img_s") -> str:
        share = row.get(f"{stage}_share_of_peak")
        return (f"| {row['size']} | {label} | {row[f'{stage}_{rate}']:.1f} | {row[f'{stage}_tflops']:.2f} | "
                f"{'-' if share is None else f'{share:.4f}'} | {row[f'{stage}_share_of_matmul']:.4f} |")

    for row in result["throughput"]:
        for stage, rate in (("classifier_train", "img_s"), ("classifier_infer", "img_s"), ("dit_train", "steps_s"),
                            ("inpaint", "img_s")):
            lines.append(rate_row(row, stage, stage, rate))
        lines.append(f"| {row['size']} | infill maps | {row['infill_maps_img_s']:.1f} | | | |")
        lines += [rate_row(row, label, f"inpaint_{name}") for name, label in ENGINE_RUNS.items()
                  if f"inpaint_{name}_img_s" in row]
    lines += ["\n## Generator presets (bf16 autocast; a training step counted as 3 network calls per image)\n",
              "| preset | px | parameters | GFLOP/call | train steps/s (batch) | train share of peak | "
              "sample images/s (50 steps) | sample share of peak |", "|---|---|---|---|---|---|---|---|"]
    share = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    for row in result.get("presets", []):
        lines.append(f"| {row['preset']} | {row['size']} | {row['parameters'] / 1e6:.1f} M | {row['gflop_per_call']:.2f} | "
                     f"{row['train_steps_s']:.1f} ({row['train_batch']}) | {share(row['train_share_of_peak'])} | "
                     f"{row['sample_img_s']:.1f} | {share(row['sample_share_of_peak'])} |")
    lines += ["\n## Classifier presets (bf16 autocast, channels_last, batch 64)\n",
              "| preset | backbone | px | parameters | GFLOP/image (train step) | train images/s | train share of peak | "
              "inference images/s |", "|---|---|---|---|---|---|---|---|"]
    for row in result.get("classifier_presets", []):
        lines.append(f"| {row['preset']} | {row['backbone']} | {row['size']} | {row['parameters'] / 1e6:.1f} M | "
                     f"{row['gflop_per_image_train']:.2f} | {row['train_img_s']:.1f} | "
                     f"{share(row['train_share_of_peak'])} | {row['infer_img_s']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--preset-sizes", type=int, nargs="+", default=[128, 256],
                        help="image sizes at which each generator preset is timed")
    parser.add_argument("--presets", nargs="+", help="which presets (default: all)")
    parser.add_argument("--classifier-sizes", type=int, nargs="+", default=[256],
                        help="image sizes at which each classifier preset is timed")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's bf16 dense peak (default: from its name)")
    parser.add_argument("--commit", help="the commit measured (default: git's; a copied tree without .git has none)")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="run tiny on the CPU against itself: checks the script, its figures mean nothing")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() and not args.cpu_smoke:
        raise SystemExit("gpu_check needs a host where torch sees CUDA (torch.cuda.is_available() is False here)")
    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    peak = args.peak_tflops or next((v for k, v in BF16_PEAK.items() if k in name), None)
    quick = args.cpu_smoke
    torch.manual_seed(0)
    result = {"commit": args.commit or commit(), "machine": machine(), "device": describe_device(device), "torch": torch.__version__,
              "bf16_peak_tflops": peak, "matmul_tflops": matmul_tflops(device, 512 if quick else 8192),
              "agreement": agreement(device, quick)}
    print(json.dumps(result["agreement"]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)

    def write() -> None:  # after every section: a run stopped by its time limit keeps what it measured
        (args.out / "gpu_check.json").write_text(json.dumps(result, indent=1) + "\n")
        (args.out / "gpu_check.md").write_text(markdown(result))

    result["throughput"], result["presets"], result["classifier_presets"] = [], [], []
    write()
    for size in args.sizes:
        result["throughput"].append(throughput(size, device, peak, result["matmul_tflops"], quick))
        print(json.dumps(result["throughput"][-1]), flush=True)
        write()
    for size in args.preset_sizes:
        result["presets"] += presets(size, device, peak, quick, args.presets)
        write()
    for size in args.classifier_sizes:
        result["classifier_presets"] += classifier_presets(size, device, peak, quick)
        write()
    return result


if __name__ == "__main__":
    main()
