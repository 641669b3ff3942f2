"""Reports: metrics JSON, a per-class F1 bar chart across settings, a before/after image grid
of generated samples with their masks, and the Markdown and table rows Prefect shows."""

from __future__ import annotations

import base64
import io

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image
from scipy.ndimage import binary_erosion

from tasks import store
from tasks.dataset import existing_rows
from tasks.images import decode_mask, decode_png

METRIC = "f1_tuned"  # the chart's metric; the table lists F1 at 0.5 too (the paper's number)


def _value(entry: dict, key: str) -> float | None:
    return entry.get(key) if entry.get("status", "ok") == "ok" else None


def _tail_classes(results: dict) -> set[str]:
    """The tail classes of the fine-tune metrics (those without positives, excluded from the
    means, included)."""
    tail_means = next(iter(results.values()))["metrics"]["means"].get("tail", {})
    return set(tail_means.get("classes", [])) | set(tail_means.get("excluded", {}))


def f1_chart_png(results: dict, metric: str = METRIC) -> bytes:
    """Grouped bars: per-class F1 for each fine-tune setting (head and tail marked)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = list(results)
    classes = list(next(iter(results.values()))["metrics"]["classes"])
    tail = _tail_classes(results)
    width = 0.8 / max(1, len(settings))
    fig, ax = plt.subplots(figsize=(max(6, len(classes) * 0.7), 3.5))
    for k, name in enumerate(settings):
        values = [_value(results[name]["metrics"]["classes"][c], metric) for c in classes]
        x = np.arange(len(classes)) + k * width
        ax.bar(x, [v or 0.0 for v in values], width, label=name)
        for xi, v in zip(x, values):
            if v is None:  # undefined (no positive in the split) is not a zero
                ax.text(xi, 0.01, "n/a", rotation=90, ha="center", va="bottom", fontsize=8, color="0.25")
    ax.set_xticks(np.arange(len(classes)) + width * (len(settings) - 1) / 2)
    ax.set_xticklabels([f"{c}*" if c in tail else c for c in classes], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(metric.replace("_", " ")), ax.set_title("per-class F1 on test (* = tail class)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="PNG", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


TILE = 256  # px per tile in the before/after sheet: a 64 px film is drawn 4x, nearest neighbour


def before_after_png(augmented_uri: str, dataset_uri: str, n: int = 8) -> bytes | None:
    """Rows of (parent | the mask's outline in red on the parent | generated), each tile
    ``TILE`` px, under a caption: what was removed and kept, whether the row was accepted and
    why (its verdict), and its quality score."""
    columns = ["image", "mask", "parent_id", "removed_labels", "kept_labels", "accepted", "verdict", "quality"]
    generated = existing_rows(augmented_uri, columns)
    if generated is None or generated.num_rows == 0:
        return None
    rows = generated.slice(0, n).to_pylist()
    parents = existing_rows(dataset_uri, ["sample_id", "image"])
    wanted = pa.array([r["parent_id"] for r in rows if r["parent_id"]], type=pa.string())  # conditional: none
    parents = parents.filter(pc.is_in(parents.column("sample_id"), wanted))
    parent_png = dict(zip(parents.column("sample_id").to_pylist(), parents.column("image").to_pylist()))
    strips = [_titles()] + [_sheet_row(r, parent_png.get(r["parent_id"])) for r in rows]
    buffer = io.BytesIO()
    Image.fromarray(np.concatenate(strips, axis=0)).save(buffer, format="PNG")
    return buffer.getvalue()


def _font(size: int = 15):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (OSError, TypeError):  # Pillow without FreeType: the small bitmap font
        return ImageFont.load_default()


def _caption(text: str, width: int, color=(255, 255, 255)) -> np.ndarray:
    """``text`` on a dark strip ``width`` px wide, wrapped to as many 20 px lines as it needs."""
    import textwrap

    from PIL import ImageDraw

    font = _font()
    per_char = font.getlength(text) / len(text) if text else 8.0  # this text's mean glyph width
    chars = max(10, int((width - 12) / max(1.0, per_char)))
    lines = textwrap.wrap(text, chars) or [""]
    strip = Image.new("RGB", (width, 6 + 20 * len(lines)), (24, 24, 24))
    ImageDraw.Draw(strip).multiline_text((6, 4), "\n".join(lines), fill=color, font=font, spacing=5)
    return np.asarray(strip)


def _titles() -> np.ndarray:
    return np.concatenate([_caption(t, TILE) for t in ("parent (real)", "mask (red outline)", "generated")], axis=1)


def _sheet_row(row: dict, parent: bytes | None) -> np.ndarray:
    """A conditional row (no parent, no mask: sampled from its finding set) gets dark tiles there."""
    def tile(gray: np.ndarray) -> np.ndarray:
        big = np.asarray(Image.fromarray(gray).resize((TILE, TILE), Image.NEAREST))
        return np.stack([big] * 3, axis=-1)

    after = tile(_gray8(decode_png(row["image"])))
    before = tile(_gray8(decode_png(parent))) if parent else np.full_like(after, 24)
    outlined = before.copy()
    if row["mask"]:
        mask = np.asarray(Image.fromarray(decode_mask(row["mask"]).astype(np.uint8) * 255).resize(
            (TILE, TILE), Image.NEAREST)) > 0
        outlined[mask & ~binary_erosion(mask, iterations=3)] = (255, 40, 40)  # a 3 px outline; the edge is outside
    verdict = "accepted" if row["accepted"] else f"not accepted: {row['verdict'] or 'unchecked'}"
    quality = f"  |  quality z {row['quality']:.2f}" if row["quality"] is not None else ""
    text = ("" if parent else "sampled from labels  |  ") + (
            f"removed {', '.join(row['removed_labels'] or []) or '-'}  |  "
            f"kept {', '.join(row['kept_labels'] or []) or '-'}  |  {verdict}{quality}")
    color = (140, 230, 140) if row["accepted"] else (255, 190, 120)
    return np.concatenate([_caption(text, 3 * TILE, color=color), np.concatenate([before, outlined, after], 1)], 0)


def _gray8(pixels: np.ndarray) -> np.ndarray:
    return (pixels >> 8).astype(np.uint8) if pixels.dtype == np.uint16 else pixels


def table_rows(results: dict) -> list[dict]:
    """One row per setting: macro, head and tail means (F1 at 0.5, F1 tuned, AP, AUROC)."""
    rows = []
    for name, result in results.items():
        row = {"setting": name}
        for group in ("macro", "head", "tail"):
            means = result["metrics"]["means"].get(group, {})
            for metric in ("f1_at_0.5", "f1_tuned", "ap", "auroc"):
                value = means.get(metric)
                row[f"{group}_{metric}"] = round(value, 4) if value is not None else None
        rows.append(row)
    return rows


UI_COLUMNS = {"macro F1": "macro_f1_tuned", "head F1": "head_f1_tuned", "tail F1": "tail_f1_tuned",
              "macro AUROC": "macro_auroc", "tail AUROC": "tail_auroc", "tail AP": "tail_ap"}


def ui_rows(rows: list[dict]) -> list[dict]:
    """The Prefect UI's table: the headline columns only, with short names, so it fits the page
    (all 13 columns were cut at its right edge; every value stays in metrics.json)."""
    return [{"setting": r["setting"], **{name: None if r[key] is None else round(r[key], 3)
                                         for name, key in UI_COLUMNS.items()}} for r in rows]


def _cell(entry: dict, metric: str) -> str:
    """A value with its 95% bootstrap interval; "n/a" (not 0) when the metric is undefined."""
    value = _value(entry, metric)
    if value is None:
        return "n/a"
    interval = (entry.get("ci95") or {}).get(metric)
    return f"{value:.3f} [{interval[0]:.2f}, {interval[1]:.2f}]" if interval else f"{value:.3f}"


def class_table(results: dict) -> list[str]:
    """Markdown: per class and setting, F1 (val-tuned thresholds), AP and AUROC with intervals."""
    if not results:
        return []
    settings = list(results)
    first = next(iter(results.values()))["metrics"]
    tail = _tail_classes(results)
    lines = ["", "Per class on test, value [95% bootstrap interval]; n/a: undefined (no positive in the split):", "",
             "| class | group | metric | " + " | ".join(settings) + " |", "|---|---|---|" + "---|" * len(settings)]
    for name in first["classes"]:
        for metric, label in (("f1_tuned", "F1"), ("ap", "AP"), ("auroc", "AUROC")):
            cells = [_cell(results[s]["metrics"]["classes"][name], metric) for s in settings]
            group = "tail" if name in tail else "head"
            lines.append(f"| {name if label == 'F1' else ''} | {group if label == 'F1' else ''} | {label} | "
                         + " | ".join(cells) + " |")
    return lines


def epoch_lines(results: dict) -> list[str]:
    """Markdown: how many generated samples each setting used in each epoch (PIL grows them)."""
    used = {s: r.get("generated_per_epoch") for s, r in results.items() if r.get("generated_per_epoch")}
    if not used:
        return []
    return ["", "Generated samples used per epoch:", ""] + [
        f"- **{s}**: {', '.join(str(n) for n in per_epoch)}" for s, per_epoch in used.items()]


def markdown(summary: dict, rows: list[dict], warnings: list[str] = (), results: dict | None = None) -> str:
    """The report: warnings, the run's summary, means per setting, the per-class table with
    intervals, the generated share per epoch."""
    text = _markdown(summary, rows, warnings)
    lines = class_table(results or {}) + epoch_lines(results or {})
    return text + ("\n".join(lines) + "\n" if lines else "")


def _markdown(summary: dict, rows: list[dict], warnings: list[str] = ()) -> str:
    lines = ["# tailforge factory run", ""]
    for warning in warnings:
        lines.append(f"> **Warning**: {warning}")
    if warnings:
        lines.append("")
    for key, value in summary.items():
        lines.append(f"- **{key}**: {value}")
    if rows:
        lines += ["", "| setting | macro F1 at 0.5 | macro F1 (tuned) | head F1 | tail F1 | macro AUROC |",
                  "|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['setting']} | {r['macro_f1_at_0.5']} | {r['macro_f1_tuned']} | "
                         f"{r['head_f1_tuned']} | {r['tail_f1_tuned']} | {r['macro_auroc']} |")
    return "\n".join(lines) + "\n"


PICTURES = (("f1_chart", "f1.png", "per-class F1"), ("samples", "samples.png", "before and after"))  # key, file, title


def write_report(report_uri: str, finetune_result: dict, augmented_uri: str | None, dataset_uri: str,
                 summary: dict) -> dict:
    """Save metrics.json, f1.png, samples.png and report.md under ``report_uri``."""
    written = {}
    metrics_uri = store.join(report_uri, "metrics.json")
    store.write_json(metrics_uri, {**finetune_result, "summary": summary})
    written["metrics"] = metrics_uri
    results = finetune_result.get("results", {})
    pngs = {"f1_chart": f1_chart_png(results) if results else None,
            "samples": before_after_png(augmented_uri, dataset_uri) if augmented_uri else None}
    pictures = [(key, name, title, pngs[key]) for key, name, title in PICTURES if pngs[key]]
    for key, name, _, png in pictures:
        written[key] = store.join(report_uri, name)
        store.write_bytes_atomic(written[key], png)
    rows = table_rows(results)
    body = markdown(summary, rows, finetune_result.get("warnings", []), results)
    # report.md links the pictures beside it; the Prefect UI's copy carries them (data URIs)
    text = body + "".join(f"\n![{title}]({name})\n" for _, name, title, _ in pictures)
    ui_text = body + "".join(f"\n![{title}](data:image/png;base64,{base64.b64encode(png).decode()})\n"
                             for _, _, title, png in pictures)
    written["markdown"] = store.join(report_uri, "report.md")
    store.write_bytes_atomic(written["markdown"], text.encode())
    return {"uris": written, "rows": rows, "markdown": text, "ui_markdown": ui_text}
