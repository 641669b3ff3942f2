"""Write a PNG contact sheet of phantom images so a person can look at them.

    python -m benchmarks.phantom_grid out.png [--n 16] [--size 128] [--seed 0] [--vocab nih]
        [--finding NAME ...] [--masks]

Each tile is one phantom image with its positive findings printed under it ("normal" when
none). ``--finding`` renders every tile with exactly those findings (each tile another
patient) instead of the sampled labels; ``--masks`` outlines each lesion mask in colour.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from tasks.labels import vocabulary
from tasks.phantom import phantom_images, render

COLOURS = [(255, 80, 80), (80, 200, 255), (255, 210, 60), (120, 255, 120), (255, 120, 255),
           (255, 160, 60), (160, 160, 255)]


def _short(name: str) -> str:
    return name.replace("Pleural_Thickening", "PlThick").replace("Enlarged Cardiomediastinum", "EnlCM")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vocab", default="nih")
    ap.add_argument("--finding", action="append", default=[])
    ap.add_argument("--masks", action="store_true")
    args = ap.parse_args(argv)

    voc = vocabulary(args.vocab)
    t0 = time.perf_counter()
    tiles = []
    if args.finding:
        labels = voc.vector(args.finding)
        for i in range(args.n):
            image, masks = render(labels, voc, args.size, np.random.default_rng([args.seed, i]))
            tiles.append((image, masks, ", ".join(_short(f) for f in voc.positives(labels))))
    else:
        for item in phantom_images(args.n, args.size, args.seed, voc):
            names = voc.positives(item.labels)
            tiles.append((item.image, item.lesion_masks,
                          ", ".join(_short(f) for f in names) or "normal"))
    elapsed = time.perf_counter() - t0

    cols = math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / cols)
    s, caption = args.size, 14
    sheet = Image.new("RGB", (cols * (s + 4), rows * (s + caption + 4)), (30, 30, 30))
    draw = ImageDraw.Draw(sheet)
    for k, (image, masks, text) in enumerate(tiles):
        x, y = (k % cols) * (s + 4) + 2, (k // cols) * (s + caption + 4) + 2
        rgb = np.repeat(image[:, :, None], 3, axis=2)
        if args.masks:
            for c, mask in enumerate(masks.values()):
                edge = mask & ~(np.roll(mask, 1, 0) & np.roll(mask, -1, 0)
                                & np.roll(mask, 1, 1) & np.roll(mask, -1, 1))
                rgb[edge] = COLOURS[c % len(COLOURS)]
        sheet.paste(Image.fromarray(rgb), (x, y))
        draw.text((x, y + s + 1), text[: max(8, s // 6)], fill=(230, 230, 230))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out)
    print(f"wrote {args.out} ({len(tiles)} images at {s}px in {elapsed:.2f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
