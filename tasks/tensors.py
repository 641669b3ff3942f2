"""Dataset rows -> in-memory tensors for the models (the tasks layer reads; models never do)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from tasks import store
from tasks.dataset import SAMPLES, existing_rows, label_matrix, read_manifest
from tasks.images import decode_mask, decode_png


@dataclass
class TensorSet:
    images: torch.Tensor  # (N, 1, S, S) float32 in [0, 1]
    labels: torch.Tensor  # (N, K) float32, NaN = unknown
    sample_ids: list[str]
    findings: list[str]
    table: pa.Table  # the rows' other requested columns, same order

    def __len__(self) -> int:
        return len(self.sample_ids)


def pixels_to_unit(pixels: np.ndarray) -> np.ndarray:
    """uint8 or uint16 (H, W) -> float32 in [0, 1]."""
    return pixels.astype(np.float32) / float(np.iinfo(pixels.dtype).max)


def load_tensors(dataset_uri: str, splits: tuple[str, ...] | None = None, normal_only: bool = False,
                 columns: tuple[str, ...] = (), where: pa.compute.Expression | None = None,
                 limit: int | None = None, shards: list[str] | None = None) -> TensorSet:
    """Decode the images (and labels) of the chosen rows, in shard order. ``shards`` limits
    the read to those shard URIs; ``columns`` may include "image" to keep the PNG bytes."""
    findings = read_manifest(dataset_uri)["labels"]
    wanted = ["sample_id", "image", "labels", "split", *[c for c in columns if c not in ("sample_id", "image", "labels", "split")]]
    table = existing_rows(dataset_uri, wanted) if shards is None else store.read_parquet(shards, wanted)
    if table is None:
        raise ValueError(f"{dataset_uri} has no samples")
    if splits:
        table = table.filter(pc.is_in(table.column("split"), pa.array(list(splits))))
    if where is not None:
        table = table.filter(where)
    labels = label_matrix(table, len(findings)) if table.num_rows else np.zeros((0, len(findings)), np.float32)
    if normal_only:
        keep = (labels == 0.0).all(axis=1)
        table, labels = table.filter(pa.array(keep)), labels[keep]
    if limit is not None:
        table, labels = table.slice(0, limit), labels[:limit]
    images = np.stack([pixels_to_unit(decode_png(b)) for b in table.column("image").to_pylist()]) \
        if table.num_rows else np.zeros((0, 1, 1), np.float32)
    kept = table if "image" in columns else table.drop_columns(["image"])
    return TensorSet(torch.from_numpy(images[:, None]), torch.from_numpy(np.array(labels, dtype=np.float32)),
                     table.column("sample_id").to_pylist(), list(findings), kept)


def rows_by_shard(dataset_uri: str, columns: list[str]) -> list[tuple[str, pa.Table]]:
    """(shard URI, its rows) for every sample shard of a dataset."""
    return [(uri, store.read_parquet([uri], columns)) for uri in store.list_shards(store.join(dataset_uri, SAMPLES))]


def lesion_masks(table: pa.Table) -> list[dict[str, np.ndarray]]:
    """The phantom's ground-truth masks per row: {finding: (S, S) bool}."""
    return [{m["label"]: decode_mask(m["mask"]) for m in (entry or [])}
            for entry in table.column("lesion_masks").to_pylist()]
