"""Reports: metrics JSON, a per-class F1 bar chart across settings, a before/after image grid
of generated samples with their masks, and the Markdown and table rows Prefect shows."""

from __future__ import annotations

import io

import numpy as np
import pyarrow.compute as pc
from PIL import Image

from tasks import store
from tasks.dataset import existing_rows
from tasks.images import decode_mask, decode_png

METRIC = "f1_tuned"  # the chart's metric; the table lists F1 at 0.5 too (the paper's number)


def _value(entry: dict, key: str) -> float | None:
    return entry.get(key) if entry.get("status", "ok") == "ok" else None


def f1_chart_png(results: dict, metric: str = METRIC) -> bytes:
    """Grouped bars: per-class F1 for each fine-tune setting (head and tail marked)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = list(results)
    classes = list(next(iter(results.values()))["metrics"]["classes"])
    tail_means = next(iter(results.values()))["metrics"]["means"].get("tail", {})
    tail = set(tail_means.get("classes", [])) | set(tail_means.get("excluded", {}))  # excluded: no positives
    width = 0.8 / max(1, len(settings))
    fig, ax = plt.subplots(figsize=(max(6, len(classes) * 0.7), 3.5))
    for k, name in enumerate(settings):
        values = [_value(results[name]["metrics"]["classes"][c], metric) or 0.0 for c in classes]
        ax.bar(np.arange(len(classes)) + k * width, values, width, label=name)
    ax.set_xticks(np.arange(len(classes)) + width * (len(settings) - 1) / 2)
    ax.set_xticklabels([f"{c}*" if c in tail else c for c in classes], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(metric.replace("_", " ")), ax.set_title("per-class F1 on test (* = tail class)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="PNG", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def before_after_png(augmented_uri: str, dataset_uri: str, n: int = 8) -> bytes | None:
    """Rows of (parent | parent with the mask in red | generated) for up to ``n`` samples."""
    generated = existing_rows(augmented_uri, ["image", "mask", "parent_id"])
    if generated is None or generated.num_rows == 0:
        return None
    generated = generated.slice(0, n)
    parents = existing_rows(dataset_uri, ["sample_id", "image"])
    parents = parents.filter(pc.is_in(parents.column("sample_id"), generated.column("parent_id")))
    parent_png = dict(zip(parents.column("sample_id").to_pylist(), parents.column("image").to_pylist()))
    tiles = []
    for image, mask, parent_id in zip(*(generated.column(c).to_pylist() for c in ("image", "mask", "parent_id"))):
        after, before = _gray8(decode_png(image)), _gray8(decode_png(parent_png[parent_id]))
        overlay = np.stack([before] * 3, axis=-1)
        overlay[decode_mask(mask), 0] = 255
        tiles.append(np.concatenate([np.stack([before] * 3, -1), overlay, np.stack([after] * 3, -1)], axis=1))
    sheet = np.concatenate(tiles, axis=0)
    buffer = io.BytesIO()
    Image.fromarray(sheet).save(buffer, format="PNG")
    return buffer.getvalue()


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


def markdown(summary: dict, rows: list[dict], warnings: list[str] = ()) -> str:
    lines = ["# tailforge factory run", ""]
    for warning in warnings:
        lines.append(f"> **Warning**: {warning}")
    if warnings:
        lines.append("")
    for key, value in summary.items():
        lines.append(f"- **{key}**: {value}")
    if rows:
        lines += ["", "| setting | macro F1@0.5 | macro F1 (tuned) | head F1 | tail F1 | macro AUROC |",
                  "|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['setting']} | {r['macro_f1_at_0.5']} | {r['macro_f1_tuned']} | "
                         f"{r['head_f1_tuned']} | {r['tail_f1_tuned']} | {r['macro_auroc']} |")
    return "\n".join(lines) + "\n"


def write_report(report_uri: str, finetune_result: dict, augmented_uri: str | None, dataset_uri: str,
                 summary: dict) -> dict:
    """Save metrics.json, f1.png, samples.png and report.md under ``report_uri``."""
    written = {}
    metrics_uri = store.join(report_uri, "metrics.json")
    store.write_json(metrics_uri, {**finetune_result, "summary": summary})
    written["metrics"] = metrics_uri
    if finetune_result.get("results"):
        written["f1_chart"] = store.join(report_uri, "f1.png")
        store.write_bytes_atomic(written["f1_chart"], f1_chart_png(finetune_result["results"]))
    grid = before_after_png(augmented_uri, dataset_uri) if augmented_uri else None
    if grid:
        written["samples"] = store.join(report_uri, "samples.png")
        store.write_bytes_atomic(written["samples"], grid)
    rows = table_rows(finetune_result.get("results", {}))
    text = markdown(summary, rows, finetune_result.get("warnings", []))
    written["markdown"] = store.join(report_uri, "report.md")
    store.write_bytes_atomic(written["markdown"], text.encode())
    return {"uris": written, "rows": rows, "markdown": text}
