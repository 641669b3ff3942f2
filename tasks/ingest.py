"""Ingest: source records -> validated, one-channel, resized images in Parquet shards.

Bad input never stops an ingest and never vanishes: each bad row becomes a quarantine row
with a reason (missing file, path outside the image root, zero bytes, truncated, not an
image, decompression bomb, unknown label, duplicate image or row) and the good rows land.
Ingesting into an existing dataset adds only what is new (rows whose source path is already
there are skipped), so the nightly factory can re-run it.
"""

from __future__ import annotations

import os
import posixpath
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator

from tasks import store
from tasks.dataset import ShardWriter, existing_quarantine_ids, existing_rows, finish_manifest, read_manifest, sample_schema
from tasks.images import DEFAULT_MAX_PIXELS, ImageError, content_id, decode, encode_png, resize_square
from tasks.sources import SourceRecord, SourceTable, default_split

Progress = Callable[[int, int], None]  # (done, total)
DEFAULT_MAX_FILE_BYTES = 512 * 2**20


@dataclass(frozen=True)
class IngestOptions:
    size: int = 64  # output side in pixels (resize rule: tasks/images.py)
    shard_rows: int = 1024  # rows per Parquet shard
    workers: int = 4  # decoding threads (Pillow and zlib release the GIL)
    max_pixels: int = DEFAULT_MAX_PIXELS  # larger images are quarantined as decompression bombs
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    name: str | None = None  # dataset name; default: the source kind
    explicit_tail: tuple[str, ...] | None = None  # overrides the below-median rule

    def __post_init__(self) -> None:
        if not 8 <= self.size <= 4096:
            raise ValueError(f"size {self.size} is outside 8..4096")
        if self.workers < 1:
            raise ValueError("workers must be at least 1")


@dataclass
class IngestReport:
    dataset_uri: str
    rows_written: int = 0
    already_present: int = 0
    quarantined: dict[str, int] = field(default_factory=dict)
    filtered: dict[str, int] = field(default_factory=dict)
    shards_written: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class _Loaded:
    png: bytes
    sample_id: str
    height: int
    width: int
    bit_depth: int


class _ImageRoot:
    """Reads image files below one root (local folder or fsspec URI), refusing escapes."""

    def __init__(self, root: str, max_file_bytes: int):
        self.remote = store.is_remote(root)
        self.fs, path = store.filesystem(root)
        self.root = path.rstrip("/") if self.remote else os.path.realpath(path)
        self.max_file_bytes = max_file_bytes

    def read(self, relative: str) -> bytes:
        if self.remote:
            full = posixpath.normpath(posixpath.join(self.root, relative))
            inside = full.startswith(self.root + "/") and not relative.startswith("/")
        else:
            full = os.path.realpath(os.path.join(self.root, relative))
            inside = full.startswith(self.root + os.sep)
        if not inside:
            raise ImageError("path_escape", f"path {relative!r} points outside the image root")
        try:
            size = self.fs.size(full)
            if size is not None and size > self.max_file_bytes:
                raise ImageError("too_large", f"file is {size:,} bytes; the limit is {self.max_file_bytes:,}")
            return self.fs.cat_file(full)
        except FileNotFoundError as exc:
            raise ImageError("missing_file", f"no file at {relative!r} under the image root") from exc
        except IsADirectoryError as exc:
            raise ImageError("not_an_image", f"{relative!r} is a folder") from exc


def _load(root: _ImageRoot, record: SourceRecord, options: IngestOptions) -> _Loaded | ImageError:
    try:
        decoded = decode(root.read(record.path), options.max_pixels)
        pixels = resize_square(decoded.pixels, options.size)
    except ImageError as exc:
        return exc
    except OSError as exc:  # e.g. permission denied, I/O error on a network filesystem
        return ImageError("unreadable", f"cannot read {record.path!r}: {exc}")
    return _Loaded(encode_png(pixels), content_id(pixels), options.size, options.size,
                   16 if pixels.dtype.itemsize == 2 else 8)


def _check_compatible(out_uri: str, vocab_name: str, size: int) -> None:
    try:
        manifest = read_manifest(out_uri)
    except FileNotFoundError:
        return
    if manifest["vocabulary"] != vocab_name or manifest["image_size"] != size:
        raise ValueError(
            f"{out_uri} already holds a {manifest['vocabulary']} dataset at {manifest['image_size']} px; "
            f"this ingest is {vocab_name} at {size} px. Choose another --out.")


def ingest(source: SourceTable, images_root: str, out_uri: str,
           options: IngestOptions = IngestOptions(), progress: Progress | None = None) -> IngestReport:
    """Decode, validate and write every record of ``source`` to the dataset at ``out_uri``."""
    started = time.perf_counter()
    _check_compatible(out_uri, source.vocab.name, options.size)
    before = existing_rows(out_uri, ["sample_id", "source_uri"])
    known_ids = set(before.column("sample_id").to_pylist()) if before is not None else set()
    known_paths = set(before.column("source_uri").to_pylist()) if before is not None else set()
    writer = ShardWriter(out_uri, sample_schema(source.extra_columns), options.shard_rows,
                         known_quarantine=existing_quarantine_ids(out_uri))
    report = IngestReport(out_uri, filtered=dict(source.filtered))

    todo: list[SourceRecord] = []
    seen_paths: dict[str, int] = {}
    for record in source.records:
        if record.path in seen_paths:
            _quarantine(writer, record, "duplicate_row",
                        f"the table lists {record.path!r} again (first at row {seen_paths[record.path]})")
            continue
        seen_paths[record.path] = record.row
        if record.path in known_paths:
            report.already_present += 1
        elif record.label_error is not None:
            _quarantine(writer, record, "bad_label", record.label_error)
        else:
            todo.append(record)

    root = _ImageRoot(images_root, options.max_file_bytes)
    first_seen: dict[str, str] = {}
    for done, (record, loaded) in enumerate(_decode_all(root, todo, options), start=1):
        if isinstance(loaded, ImageError):
            _quarantine(writer, record, loaded.code, str(loaded))
        elif loaded.sample_id in known_ids:
            _quarantine(writer, record, "duplicate_image",
                        f"same pixels as {first_seen.get(loaded.sample_id, 'an image already in the dataset')}")
        else:
            known_ids.add(loaded.sample_id)
            first_seen[loaded.sample_id] = record.path
            writer.add(_row(record, loaded))
        if progress:
            progress(done, len(todo))
    writer.close()
    finish_manifest(out_uri, name=options.name or source.kind, vocab_name=source.vocab.name,
                    image_size=options.size, source={**source.description, "images_root": _describe(images_root)},
                    run_id=writer.run_id, explicit_tail=list(options.explicit_tail) if options.explicit_tail else None,
                    extra_columns=source.extra_columns)
    report.rows_written = writer.written
    report.shards_written = len(writer.shards)
    report.quarantined = dict(writer.quarantined)
    report.seconds = round(time.perf_counter() - started, 3)
    return report


def _decode_all(root: _ImageRoot, records: list[SourceRecord], options: IngestOptions
                ) -> Iterator[tuple[SourceRecord, _Loaded | ImageError]]:
    """Decode in a thread pool, yielding in table order (so the first of two duplicates wins)."""
    with ThreadPoolExecutor(max_workers=options.workers) as pool:
        for start in range(0, len(records), 256):
            chunk = records[start:start + 256]
            yield from zip(chunk, pool.map(lambda r: _load(root, r, options), chunk))


def _row(record: SourceRecord, loaded: _Loaded) -> dict:
    return {
        "sample_id": loaded.sample_id, "image": loaded.png, "height": loaded.height,
        "width": loaded.width, "bit_depth": loaded.bit_depth,
        "labels": [float(v) for v in record.labels],
        "split": record.split or default_split(record.patient_id or record.path),
        "patient_id": record.patient_id, "view": record.view, "source_uri": record.path,
        "origin": "real", "boxes": record.boxes or None, **record.extra,
    }


def _quarantine(writer: ShardWriter, record: SourceRecord, code: str, reason: str) -> None:
    writer.quarantine(reason_code=code, reason=reason, stage="ingest", row=record.row,
                      source_uri=record.path, patient_id=record.patient_id, raw_labels=record.raw_labels)


def _describe(root: str) -> str:
    return root if store.is_remote(root) else os.path.abspath(root)


def ingest_phantom(out_uri: str, n: int, size: int = 64, seed: int = 0, vocab: str = "nih",
                   shard_rows: int = 1024, explicit_tail: tuple[str, ...] | None = None,
                   progress: Progress | None = None) -> IngestReport:
    """Write ``n`` built-in phantom images (tasks/phantom/) as a dataset, masks included."""
    from tasks.images import encode_mask
    from tasks.labels import vocabulary
    from tasks.phantom import phantom_images

    started = time.perf_counter()
    vocabulary_ = vocabulary(vocab)
    _check_compatible(out_uri, vocabulary_.name, size)
    before = existing_rows(out_uri, ["sample_id"])
    known_ids = set(before.column("sample_id").to_pylist()) if before is not None else set()
    writer = ShardWriter(out_uri, sample_schema(), shard_rows)
    report = IngestReport(out_uri)
    for done, item in enumerate(phantom_images(n, size=size, seed=seed, vocab=vocabulary_), start=1):
        sample_id = content_id(item.image)
        if sample_id in known_ids:
            report.already_present += 1
        else:
            known_ids.add(sample_id)
            writer.add({
                "sample_id": sample_id, "image": encode_png(item.image), "height": size, "width": size,
                "bit_depth": 8, "labels": [float(v) for v in item.labels], "split": item.split,
                "patient_id": item.patient_id, "view": "PA", "source_uri": f"phantom://{seed}/{item.index}",
                "origin": "phantom", "seed": seed,
                "lesion_masks": [{"label": k, "mask": encode_mask(m)} for k, m in item.lesion_masks.items()] or None,
            })
        if progress:
            progress(done, n)
    writer.close()
    finish_manifest(out_uri, name="phantom", vocab_name=vocabulary_.name, image_size=size,
                    source={"kind": "phantom", "n": n, "seed": seed}, run_id=writer.run_id,
                    explicit_tail=list(explicit_tail) if explicit_tail else None)
    report.rows_written = writer.written
    report.shards_written = len(writer.shards)
    report.seconds = round(time.perf_counter() - started, 3)
    return report
