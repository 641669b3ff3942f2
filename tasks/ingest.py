"""Ingest: source records -> validated, one-channel, resized images in Parquet shards.

Bad input never stops an ingest and never vanishes: each bad row becomes a quarantine row
with a reason (missing file, path outside the image root, not a regular file (FIFO, device,
socket, dangling or looping symlink), zero bytes, truncated, corrupt, not an image, implausible
size, decompression bomb, unknown label, duplicate image or row) and the good rows land.
Ingesting into an existing dataset adds only what is new (rows whose source path is already
there are skipped), so the nightly factory can re-run it.

Longer than ~300 lines: every check an image passes before it lands (the hostile-input list
above) with its quarantine reason, and the phantom's ingest that writes through the same path.
"""

from __future__ import annotations

import errno
import os
import posixpath
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from stat import S_ISBLK, S_ISCHR, S_ISDIR, S_ISFIFO, S_ISREG, S_ISSOCK
from typing import Callable, Iterator

from tasks import sources, store
from tasks.dataset import (ShardWriter, check_writable, existing_quarantine_ids, existing_rows, finish_manifest,
                           image_root, new_run_id, patient_splits, retire_quarantine, sample_schema, utcnow)
from tasks.images import (DEFAULT_MAX_ASPECT, DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE, ImageError, check_plausible,
                          content_id, decode, encode_png, resize_square)
from tasks.locks import dataset_lock
from tasks.phantom.regime import Regime
from tasks.runs import recorded_run
from tasks.sources import SourceRecord, SourceTable, default_split

Progress = Callable[[int, int], None]  # (done, total)
DEFAULT_MAX_FILE_BYTES = 512 * 2**20
DEFAULT_MAX_READ_S = 120.0  # per image file
READ_CHUNK = 4 * 2**20
FILE_KINDS = ((S_ISFIFO, "FIFO (named pipe)"), (S_ISCHR, "character device"), (S_ISBLK, "block device"),
              (S_ISSOCK, "socket"))


@dataclass(frozen=True)
class IngestOptions:
    size: int = 64  # output side in pixels (resize rule: tasks/images.py)
    shard_rows: int = 1024  # rows per Parquet shard
    workers: int = 4  # decoding threads (Pillow and zlib release the GIL)
    max_pixels: int = DEFAULT_MAX_PIXELS  # larger images are quarantined as decompression bombs
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    min_side: int = DEFAULT_MIN_SIDE  # smaller images are quarantined as implausible_size
    max_aspect: float = DEFAULT_MAX_ASPECT  # so are longer strips (longer side / shorter side)
    max_read_s: float = DEFAULT_MAX_READ_S  # per file; a slower read is quarantined as read_timeout
    name: str | None = None  # dataset name; default: the source kind
    explicit_tail: tuple[str, ...] | None = None  # overrides the below-median rule
    allow_missing: bool = False  # ingest even when most sampled image paths have no file (else stop: wrong folder?)
    follow_symlinks: bool = False  # read symlinks in the image folder that point outside it (else path_escape)

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
    retired: int = 0  # earlier quarantine rows dropped: their image is in the dataset now
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
    """Reads image files below one root (local folder or fsspec URI), refusing escapes.

    Only regular files are opened: a FIFO would block the open until a writer came, a device
    could stream forever; those, sockets and dangling or looping symlinks are quarantined as
    ``not_regular_file`` (folders as ``not_an_image``). Reads are bounded in bytes and time."""

    def __init__(self, root: str, max_file_bytes: int, max_read_s: float = DEFAULT_MAX_READ_S,
                 follow_symlinks: bool = False):
        self.follow_symlinks = follow_symlinks
        self.remote = store.is_remote(root)
        self.fs, path = store.filesystem(root)
        self.root = path.rstrip("/") if self.remote else os.path.realpath(path)
        self.max_file_bytes = max_file_bytes
        self.max_read_s = max_read_s

    def read(self, relative: str) -> bytes:
        if "\0" in relative:  # os calls raise ValueError on it, which stopped the whole ingest
            raise ImageError("missing_file", f"path {relative!r} holds a NUL byte; no file has such a name")
        full, inside = self._full(relative)
        if not inside:
            raise ImageError("path_escape", f"path {relative!r} points outside the image root")
        return self._read_remote(full, relative) if self.remote else self._read_local(full, relative)

    def exists(self, relative: str) -> bool:
        """Whether anything is at ``relative`` (a cheap look before any decoding). A path that
        leaves the root counts as found: reading it is refused as ``path_escape``, not missing."""
        if "\0" in relative:
            return False
        full, inside = self._full(relative)
        if not inside:
            return True
        return self.fs.exists(full) if self.remote else os.path.lexists(full)

    def _full(self, relative: str) -> tuple[str, bool]:
        """The path under the root, and whether it stays inside the root: the table's path as
        written (no ``..`` out, not absolute), and unless ``follow_symlinks``, where it leads (a
        symlink in the folder that points outside is an escape too: an upload folder someone
        else can write to must not pull in files from elsewhere on the host)."""
        full, inside = self._as_written(relative)
        if inside and not self.remote and not self.follow_symlinks:
            inside = not self._leads_outside(full)
        return full, inside

    def links_outside(self, relative: str) -> bool:
        """A path inside the folder as written that a symlink leads out of."""
        if self.remote or "\0" in relative:
            return False
        full, inside = self._as_written(relative)
        return inside and self._leads_outside(full)

    def _as_written(self, relative: str) -> tuple[str, bool]:
        """The path under the root, and whether the table's path as written stays inside it."""
        join, sep = (posixpath, "/") if self.remote else (os.path, os.sep)
        full = join.normpath(join.join(self.root, relative))
        return full, full.startswith(self.root + sep) and not join.isabs(relative)

    def _leads_outside(self, full: str) -> bool:
        """A local path whose symlinks resolve outside the root."""
        return not os.path.realpath(full).startswith(self.root + os.sep)

    def _check_size(self, size: int | None) -> None:
        if size is not None and size > self.max_file_bytes:
            raise ImageError("too_large", f"file is {size:,} bytes; the limit is {self.max_file_bytes:,}")

    def _read_remote(self, full: str, relative: str) -> bytes:
        try:
            info = self.fs.info(full)
        except FileNotFoundError as exc:
            raise ImageError("missing_file", f"no file at {relative!r} under the image root") from exc
        if info.get("type") == "directory":
            raise ImageError("not_an_image", f"{relative!r} is a folder")
        if info.get("type") != "file":
            raise ImageError("not_regular_file", f"{relative!r} is a {info.get('type')!r} object, not a file")
        self._check_size(info.get("size"))
        return self.fs.cat_file(full)

    def _read_local(self, full: str, relative: str) -> bytes:
        _check_regular(self._stat(full, relative), relative)  # stat first: never open what is not a file
        fd = os.open(full, os.O_RDONLY | os.O_NONBLOCK)  # O_NONBLOCK: a FIFO swapped in after the stat opens at once
        try:
            stat = os.fstat(fd)
            _check_regular(stat, relative)  # the file actually opened
            self._check_size(stat.st_size)
            return self._read_bounded(fd, relative)
        finally:
            os.close(fd)

    def _stat(self, full: str, relative: str) -> os.stat_result:
        try:
            return os.stat(full)
        except FileNotFoundError as exc:
            if os.path.lexists(os.path.join(self.root, relative)):
                raise ImageError("not_regular_file", f"{relative!r} is a symlink to nothing") from exc
            raise ImageError("missing_file", f"no file at {relative!r} under the image root") from exc
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ImageError("not_regular_file", f"{relative!r} is a symlink loop") from exc
            raise

    def _read_bounded(self, fd: int, relative: str) -> bytes:
        """At most max_file_bytes, within max_read_s (checked between chunks: a slow network file
        system is cut off; a single read the kernel never returns from cannot be)."""
        deadline = time.monotonic() + self.max_read_s
        chunks, total = [], 0
        while chunk := os.read(fd, READ_CHUNK):
            chunks.append(chunk)
            total += len(chunk)
            self._check_size(total)  # a file that grew after the stat
            if time.monotonic() > deadline:
                raise ImageError("read_timeout", f"reading {relative!r} took over {self.max_read_s:g} s")
        return b"".join(chunks)


def _check_regular(stat: os.stat_result, relative: str) -> None:
    if S_ISDIR(stat.st_mode):
        raise ImageError("not_an_image", f"{relative!r} is a folder")
    if not S_ISREG(stat.st_mode):
        kind = next((name for test, name in FILE_KINDS if test(stat.st_mode)), "special file")
        raise ImageError("not_regular_file", f"{relative!r} is a {kind}, not a regular file; "
                         f"only regular image files are read")


def _load(root: _ImageRoot, record: SourceRecord, options: IngestOptions) -> _Loaded | ImageError:
    try:
        decoded = decode(root.read(record.path), options.max_pixels)
        check_plausible(decoded, options.min_side, options.max_aspect)
        pixels = resize_square(decoded.pixels, options.size)
    except ImageError as exc:
        return exc
    except OSError as exc:  # e.g. permission denied, I/O error on a network filesystem
        return ImageError("unreadable", f"cannot read {record.path!r}: {exc}")
    return _Loaded(encode_png(pixels), content_id(pixels), options.size, options.size,
                   16 if pixels.dtype.itemsize == 2 else 8)


def ingest(source: SourceTable, images_root: str, out_uri: str,
           options: IngestOptions = IngestOptions(), progress: Progress | None = None) -> IngestReport:
    """Decode, validate and write every record of ``source`` to the dataset at ``out_uri``
    (one writer at a time: tasks/locks.py)."""
    run_id = new_run_id()  # the record's and the rows' (so a row finds the run that wrote it)
    existing = check_writable(out_uri, "real", source.vocab.name, options.size)  # refused before a lock or run
    # record (again under the lock: two writers of different kinds may start on one new folder at once)
    if existing is None and not options.allow_missing:  # a new dataset from a wrong folder: not even a folder
        check_images_found(_ImageRoot(images_root, options.max_file_bytes, options.max_read_s, options.follow_symlinks),
                           [r for r in source.records if r.label_error is None], images_root)
    with dataset_lock(out_uri, f"ingest {source.kind}"), \
            recorded_run(out_uri, run_id, "ingest", {"source": source.kind, "images": images_root,
                                                     "options": asdict(options)}, utcnow()) as done:
        report = _ingest(source, images_root, out_uri, options, progress, run_id)
        done(report.to_json())
        return report


def _ingest(source: SourceTable, images_root: str, out_uri: str, options: IngestOptions,
            progress: Progress | None, run_id: str) -> IngestReport:
    started = time.perf_counter()
    existing = check_writable(out_uri, "real", source.vocab.name, options.size)
    before = existing_rows(out_uri, ["sample_id", "source_uri", "patient_id", "split", "run_id"])
    known_ids = set(before.column("sample_id").to_pylist()) if before is not None else set()
    known_paths = _paths_from(before, existing, _describe(images_root))
    split_of_patient = patient_splits(before)
    writer = ShardWriter(out_uri, sample_schema(source.extra_columns), options.shard_rows, run_id=run_id,
                         known_quarantine=existing_quarantine_ids(out_uri))
    report = IngestReport(out_uri, filtered=dict(source.filtered))

    todo: list[SourceRecord] = []
    seen_paths: dict[str, int] = {}
    for record in source.records:
        if record.path in seen_paths:
            _quarantine(writer, record, "duplicate_row",
                        f"the table lists {record.path!r} again (first at line {seen_paths[record.path] + 2}, "
                        f"counting the header as line 1)")
            continue
        seen_paths[record.path] = record.row
        if record.path in known_paths:
            report.already_present += 1
        elif record.label_error is not None:
            _quarantine(writer, record, "bad_label", record.label_error)
        elif record.patient_id and split_of_patient.setdefault(record.patient_id, _split(record)) != _split(record):
            _quarantine(writer, record, "patient_in_other_split",
                        f"patient {record.patient_id} already has images in {split_of_patient[record.patient_id]}; "
                        f"this row would put them in {_split(record)} too, which makes every test figure "
                        f"optimistic. Give all of a patient's images one split (the split table), or ingest into "
                        f"a new dataset")
        else:
            todo.append(record)

    root = _ImageRoot(images_root, options.max_file_bytes, options.max_read_s, options.follow_symlinks)
    if not options.allow_missing:
        check_images_found(root, todo, images_root)
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
            known_paths.add(record.path)
            writer.add(_row(record, loaded))
        if progress:
            progress(done, len(todo))
    writer.close()
    report.retired = retire_quarantine(out_uri, known_paths)  # rows that failed before and are in now
    # each run's image folder: rows keep their run id, so lineage joins a row to the folder it came from
    roots = {**(existing or {}).get("images_roots", {}), writer.run_id: _describe(images_root)}
    finish_manifest(out_uri, name=options.name or (existing or {}).get("name") or source.kind, kind="real",
                    vocab_name=source.vocab.name, image_size=options.size, source=source.description,
                    run_id=writer.run_id, explicit_tail=list(options.explicit_tail) if options.explicit_tail else None,
                    extra_columns=source.extra_columns, extra={"images_roots": roots})
    report.rows_written = writer.written
    report.shards_written = len(writer.shards)
    report.quarantined = dict(writer.quarantined)
    report.seconds = round(time.perf_counter() - started, 3)
    return report


MISSING_PROBE = 50  # image paths looked at before any decoding
MISSING_LIMIT = 0.5  # more than this share without a file (of a probe of at least MISSING_MIN_PROBE) ...
MISSING_MIN_PROBE = 20


class MissingImages(ValueError):
    """Most image paths of the table have no file under the images folder: nothing was ingested."""


def check_images_found(root: "_ImageRoot", todo: list[SourceRecord], images_root: str) -> None:
    """Stop before any work when none of a sample of the new rows' image paths (the first ones
    and some spread over the table) has a file, or more than half of a sample of 20 or more: a
    wrong folder is an error, not a success with a quarantine row per image."""
    if not todo:
        return
    step = max(1, len(todo) // MISSING_PROBE)
    probe = list({id(r): r for r in todo[:10] + todo[::step][:MISSING_PROBE - 10]}.values())

    def stop_if_most(bad: list, says, then: str) -> None:
        """``says(example path)``: what is wrong with them; ``then``: what to do."""
        if len(bad) == len(probe) or (len(probe) >= MISSING_MIN_PROBE and len(bad) > MISSING_LIMIT * len(probe)):
            example = posixpath.join(images_root.rstrip("/"), bad[0].path)
            raise MissingImages(f"{len(bad)} of {len(probe)} sampled image paths (of {len(todo):,} new rows) "
                                f"{says(example)}. Nothing was ingested. {then}")

    if not root.follow_symlinks:
        stop_if_most([r for r in probe if root.links_outside(r.path)],
                     lambda e: f"are symlinks that lead outside {images_root}, e.g. {e} -> {os.path.realpath(e)}",
                     "If the links are yours, pass --follow-symlinks (dataset.follow_symlinks: true); otherwise "
                     "point the images folder at where the files are")
    stop_if_most([r for r in probe if not root.exists(r.path)], lambda e: f"have no file under {images_root}, e.g. {e}",
                 "Check the images folder (the table's paths are relative to it), or pass --allow-missing "
                 "(dataset.allow_missing) to ingest what is there and quarantine the rest")


def _decode_all(root: _ImageRoot, records: list[SourceRecord], options: IngestOptions
                ) -> Iterator[tuple[SourceRecord, _Loaded | ImageError]]:
    """Decode in a thread pool, yielding in table order (so the first of two duplicates wins)."""
    with ThreadPoolExecutor(max_workers=options.workers) as pool:
        for start in range(0, len(records), 256):
            chunk = records[start:start + 256]
            yield from zip(chunk, pool.map(lambda r: _load(root, r, options), chunk))


def _paths_from(rows, manifest: dict | None, root: str) -> set[str]:
    """The source paths already ingested from the folder ``root``: rows whose run read that folder
    (``image_root``; in a manifest from before folders were kept per run, the one folder it names,
    or every row where it names none). A path from another folder names another file, however
    alike the names."""
    if rows is None:
        return set()
    folders = {run: image_root(manifest or {}, run)[0] for run in set(rows.column("run_id").to_pylist())}
    return {path for path, run in zip(rows.column("source_uri").to_pylist(), rows.column("run_id").to_pylist())
            if folders[run] in (root, None)}


def _split(record: SourceRecord) -> str:
    """The record's split: the source's or the split table's, else the patient hash."""
    return record.split or default_split(record.patient_id or record.path)


def _row(record: SourceRecord, loaded: _Loaded) -> dict:
    return {
        "sample_id": loaded.sample_id, "image": loaded.png, "height": loaded.height,
        "width": loaded.width, "bit_depth": loaded.bit_depth,
        "labels": [float(v) for v in record.labels],
        "split": _split(record),
        "patient_id": record.patient_id, "view": record.view, "source_uri": record.path,
        "origin": "real", "boxes": record.boxes or None, **record.extra,
    }


def _quarantine(writer: ShardWriter, record: SourceRecord, code: str, reason: str) -> None:
    writer.quarantine(reason_code=code, reason=reason, stage="ingest", row=record.row,
                      source_uri=record.path, patient_id=record.patient_id, raw_labels=record.raw_labels)


def _describe(root: str) -> str:
    return root if store.is_remote(root) else os.path.abspath(root)


def ingest_source(dataset, out_uri: str, progress=None) -> IngestReport:
    """Ingest the real source a settings file's ``dataset`` section names (flows.settings
    .DatasetSettings): read its table with the options its kind takes (tasks.sources.READERS),
    apply a split override, ingest: what `tailforge ingest` and the factory's ingest step both run."""
    options = IngestOptions(size=dataset.size, shard_rows=dataset.shard_rows, workers=dataset.workers,
                            explicit_tail=dataset.tail, name=dataset.source, allow_missing=dataset.allow_missing,
                            follow_symlinks=dataset.follow_symlinks)
    source = sources.read_source(dataset.source, dataset.table, **sources.options_of(dataset))
    if dataset.split_csv:
        sources.apply_split_csv(source, dataset.split_csv)
    return ingest(source, dataset.images, out_uri, options, progress)


def ingest_phantom(out_uri: str, n: int, size: int = 64, seed: int = 0, vocab: str = "nih",
                   shard_rows: int = 1024, explicit_tail: tuple[str, ...] | None = None,
                   progress: Progress | None = None, workers: int = 1, regime: Regime = Regime()) -> IngestReport:
    """Write ``n`` built-in phantom images (tasks/phantom/) as a dataset, masks included;
    ``workers`` processes render them (the same images in the same order). A ``regime`` other
    than the default is named in the run's parameters, the manifest's source and every row's
    ``source_uri``."""
    parameters = phantom_parameters(n, size, seed, vocab, regime)
    run_id = new_run_id()
    check_writable(out_uri, "phantom", vocab, size)  # refused before a lock or run record (again under the lock)
    with dataset_lock(out_uri, "phantom"), recorded_run(out_uri, run_id, "ingest", parameters, utcnow()) as done:
        report = _ingest_phantom(out_uri, n, size, seed, vocab, shard_rows, explicit_tail, progress, run_id, workers,
                                 regime)
        done(report.to_json())
        return report


def phantom_parameters(n: int, size: int, seed: int, vocab: str = "nih", regime: Regime = Regime()) -> dict:
    """What a phantom ingest's run record names as its parameters (these images, exactly)."""
    default = {"source": "phantom", "n": n, "size": size, "seed": seed, "vocab": vocab}
    return default if regime.is_default else default | {"regime": asdict(regime)}


def _ingest_phantom(out_uri: str, n: int, size: int, seed: int, vocab: str, shard_rows: int,
                    explicit_tail: tuple[str, ...] | None, progress: Progress | None, run_id: str,
                    workers: int = 1, regime: Regime = Regime()) -> IngestReport:
    from tasks.images import encode_mask
    from tasks.labels import vocabulary
    from tasks.phantom import phantom_images

    started = time.perf_counter()
    vocabulary_ = vocabulary(vocab)
    check_writable(out_uri, "phantom", vocabulary_.name, size)
    before = existing_rows(out_uri, ["sample_id"])
    known_ids = set(before.column("sample_id").to_pylist()) if before is not None else set()
    writer = ShardWriter(out_uri, sample_schema(), shard_rows, run_id=run_id)
    report = IngestReport(out_uri)
    images = phantom_images(n, size=size, seed=seed, vocab=vocabulary_, workers=workers, regime=regime)
    for done, item in enumerate(images, start=1):
        sample_id = content_id(item.image)
        if sample_id in known_ids:
            report.already_present += 1
        else:
            known_ids.add(sample_id)
            writer.add({
                "sample_id": sample_id, "image": encode_png(item.image), "height": size, "width": size,
                "bit_depth": 8, "labels": [float(v) for v in item.labels], "split": item.split,
                "patient_id": item.patient_id, "view": "PA",
                "source_uri": f"phantom://{seed}/{item.index}{regime.query()}",
                "origin": "phantom", "seed": seed,
                "lesion_masks": [{"label": k, "mask": encode_mask(m)} for k, m in item.lesion_masks.items()] or None,
            })
        if progress:
            progress(done, n)
    writer.close()
    finish_manifest(out_uri, name="phantom", kind="phantom", vocab_name=vocabulary_.name, image_size=size,
                    source={"kind": "phantom", "n": n, "seed": seed}
                    | ({} if regime.is_default else {"regime": asdict(regime)}), run_id=writer.run_id,
                    explicit_tail=list(explicit_tail) if explicit_tail else None)
    report.rows_written = writer.written
    report.shards_written = len(writer.shards)
    report.seconds = round(time.perf_counter() - started, 3)
    return report
