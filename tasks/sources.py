"""Readers for the source tables: NIH ChestX-ray14, CheXpert, MIMIC-CXR-JPG, folder + CSV.

Each reader turns a table into ``SourceRecord``s (no image is opened here) and fails early,
before any work, with an error naming a missing column. A row whose labels cannot be read
becomes a record with ``label_error`` set; the ingest quarantines it.

Longer than ~300 lines: one reader per real source and the CSV guards they share (quoted paths,
splits, synonyms): a source's quirks sit beside the others' so a new one follows them.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np

from models.registry import Registry
from tasks.labels import (BlankPolicy, UncertainPolicy, UnknownLabelError, Vocabulary,
                          chexpert_vector, parse_label_list, vocabulary)

if TYPE_CHECKING:
    import pandas as pd

VIEWS = ("frontal", "lateral", "all")  # chexpert, mimic: which views are read
SPLITS = ("train", "val", "test")
SPLIT_SYNONYMS = {"train": "train", "training": "train", "val": "val", "valid": "val",
                  "validate": "val", "validation": "val", "test": "test"}


class TableError(ValueError):
    """A source table that cannot be used at all (missing file or column, bad values)."""


@dataclass
class SourceRecord:
    row: int  # 0-based data row in the source table
    path: str  # image path relative to the images root, as the table writes it
    patient_id: str | None
    labels: np.ndarray | None  # (K,) float32 aligned to the vocabulary; None on label_error
    raw_labels: str
    label_error: str | None = None
    split: str | None = None  # from the source itself (MIMIC) or a split CSV
    view: str | None = None  # PA / AP / LL / ...
    boxes: list[dict] = field(default_factory=list)  # {label, x, y, w, h} as fractions of the side
    extra: dict[str, str] = field(default_factory=dict)  # folder tables: columns kept as they are


@dataclass
class SourceTable:
    kind: str  # nih | chexpert | mimic | folder
    vocab: Vocabulary
    records: list[SourceRecord]
    description: dict  # what was read, for dataset.json (paths, policies)
    filtered: dict[str, int] = field(default_factory=dict)  # rows left out on purpose, by reason
    extra_columns: list[str] = field(default_factory=list)


def _read_csv(path: str, required: list[str], what: str) -> "pd.DataFrame":
    import pandas as pd  # here: the CLI lists the sources without paying for pandas

    if not os.path.exists(path):
        raise TableError(f"{what} not found: {path}")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise TableError(f"{what} {path} is not a readable CSV: {exc}") from exc
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise TableError(f"{what} {path} lacks required column(s) {missing}; "
                         f"it has {list(frame.columns)}")
    return frame


# a quoted cell can hold outer whitespace only where a quote meets a space or tab
_QUOTE_MEETS_SPACE = re.compile(r'"[ \t]|[ \t]"')
_CELL = re.compile(r'"((?:[^"]|"")*)"|[^,\r\n"]*')  # RFC 4180: a quoted cell, or a plain one


def _path_cells(table: str, frame: "pd.DataFrame", column: str) -> list[str]:
    """An image path column as written: plain cells stripped (stray spaces around commas), quoted
    cells kept whole, since the quotes delimit the value (``"a.png "`` names a file whose name
    ends in a space; stripping it made the file look missing)."""
    quoted = _quoted_cells(table, list(frame.columns).index(column), len(frame))
    return [cell if q else cell.strip() for cell, q in zip(frame[column], quoted)]


def _quoted_cells(table: str, column: int, rows: int) -> list[bool]:
    """Per data row, whether its cell in ``column`` was quoted. All False when no quoted cell can
    hold outer whitespace, or where the file does not split into cells as RFC 4180 says (pandas
    read it more leniently; those cells are stripped, as before)."""
    import fsspec

    with fsspec.open(table, "rt", compression="infer", encoding="utf-8-sig", newline="") as fh:
        text = fh.read()
    records = _split_records(text) if _QUOTE_MEETS_SPACE.search(text) else None
    if records is None or len(records) != rows + 1:
        return [False] * rows
    return [len(r) > column and r[column] for r in records[1:]]


def _split_records(text: str) -> list[list[bool]] | None:
    """The records of a CSV text as lists of "was this cell quoted"; blank lines are skipped
    (pandas does); None at a quote inside a plain cell or text after a closing quote."""
    records, record, pos, line_start = [], [], 0, 0
    while True:
        match = _CELL.match(text, pos)  # matches (maybe empty) at every position, the end included
        record.append(match.group(1) is not None)
        pos = match.end()
        if pos < len(text) and text[pos] == ",":
            pos += 1
            continue
        if pos < len(text) and text[pos] not in "\r\n":
            return None
        if pos > line_start:
            records.append(record)
        record = []
        pos += 2 if text.startswith("\r\n", pos) else 1
        line_start = pos
        if pos >= len(text):
            return records


def _labels(parse, raw: str):
    try:
        return parse(raw), None
    except (UnknownLabelError, ValueError) as exc:
        return None, str(exc)


def read_nih(table: str, bbox_table: str | None = None) -> SourceTable:
    """NIH ``Data_Entry_2017*.csv`` (+ ``BBox_List_2017.csv``, found beside it by default)."""
    vocab = vocabulary("nih")
    frame = _read_csv(table, ["Image Index", "Finding Labels", "Patient ID"], "NIH label table")
    if bbox_table is None:  # found beside the label table, plain or gzipped as the label table may be
        folder = os.path.dirname(os.path.abspath(table))
        bbox_table = next((p for name in ("BBox_List_2017.csv", "BBox_List_2017.csv.gz")
                           if os.path.exists(p := os.path.join(folder, name))), None)
    boxes = _read_nih_boxes(bbox_table, vocab) if bbox_table else {}
    views = frame["View Position"] if "View Position" in frame.columns else [None] * len(frame)
    records = []
    for i, (name, raw, patient, view) in enumerate(zip(_path_cells(table, frame, "Image Index"),
                                                       frame["Finding Labels"], frame["Patient ID"], views)):
        labels, error = _labels(lambda r: parse_label_list(r, vocab), raw)
        records.append(SourceRecord(row=i, path=name, patient_id=patient.strip() or None,
                                    labels=labels, raw_labels=raw, label_error=error,
                                    view=(view or None), boxes=boxes.get(name, [])))
    return SourceTable("nih", vocab, records, {"kind": "nih", "table": os.path.basename(table),
                                               "bbox_table": bbox_table and os.path.basename(bbox_table)})


NIH_BOX_SIDE = 1024.0  # NIH boxes are in the coordinates of its 1024x1024 release images


def _read_nih_boxes(path: str, vocab: Vocabulary) -> dict[str, list[dict]]:
    """``BBox_List_2017.csv``: its header spreads 'Bbox [x,y,w,h]' over four columns."""
    import fsspec

    out: dict[str, list[dict]] = {}
    with fsspec.open(path, "rt", compression="infer", encoding="utf-8-sig", newline="") as fh:  # .gz as the labels
        reader = csv.reader(fh)
        header = next(reader, [])
        if len(header) < 6 or header[0] != "Image Index":
            raise TableError(f"NIH box table {path} does not start with 'Image Index,Finding Label,Bbox [x,y,w,h]'")
        for line, cells in enumerate(reader, start=2):
            if len(cells) < 6:
                raise TableError(f"NIH box table {path}, line {line}: expected 6 values, got {len(cells)}")
            try:
                x, y, w, h = (float(c) / NIH_BOX_SIDE for c in cells[2:6])
                label = vocab.canonical(cells[1])
            except (ValueError, UnknownLabelError) as exc:
                raise TableError(f"NIH box table {path}, line {line}: {exc}") from exc
            out.setdefault(cells[0].strip(), []).append({"label": label, "x": x, "y": y, "w": w, "h": h})
    return out


_CHEXPERT_PATIENT = re.compile(r"(patient\d+)")


def read_chexpert(table: str, views: str = "frontal", uncertain: str = "ignore",
                  blank: str = "ignore") -> SourceTable:
    """CheXpert ``train.csv`` / ``valid.csv``: ``Path`` (relative to the folder that holds
    ``CheXpert-v1.0*/``), ``Frontal/Lateral``, ``AP/PA`` and the 14 observation columns."""
    vocab = vocabulary("chexpert")
    frame = _read_csv(table, ["Path", *vocab.findings, vocab.normal_label], "CheXpert table")
    records, filtered = [], {}
    paths = _path_cells(table, frame, "Path")
    for i, cells in enumerate(frame.to_dict("records")):
        orientation = cells.get("Frontal/Lateral", "").strip().lower()
        if views != "all" and orientation and orientation != views:
            filtered[f"view {orientation}"] = filtered.get(f"view {orientation}", 0) + 1
            continue
        match = _CHEXPERT_PATIENT.search(cells["Path"])
        labels, error = _labels(lambda c: chexpert_vector(c, vocab, UncertainPolicy(uncertain),
                                                          BlankPolicy(blank)), cells)
        records.append(SourceRecord(row=i, path=paths[i],
                                    patient_id=match.group(1) if match else None,
                                    labels=labels, raw_labels=_raw(cells, vocab), label_error=error,
                                    view=cells.get("AP/PA") or orientation or None))
    return SourceTable("chexpert", vocab, records,
                       {"kind": "chexpert", "table": os.path.basename(table), "views": views,
                        "uncertain_policy": uncertain, "blank_policy": blank}, filtered)


def _raw(cells: dict, vocab: Vocabulary) -> str:
    return ";".join(f"{k}={cells.get(k, '')}" for k in (*vocab.findings, vocab.normal_label) if cells.get(k, ""))


def _find_beside(table: str, pattern: str, what: str) -> str:
    found = sorted(glob.glob(os.path.join(os.path.dirname(os.path.abspath(table)), pattern)))
    if not found:
        raise TableError(f"no {what} ({pattern}) beside {table}; pass it explicitly")
    return found[0]


def read_mimic(chexpert_table: str, split_table: str | None = None, metadata_table: str | None = None,
               views: str = "frontal", uncertain: str = "ignore", blank: str = "ignore") -> SourceTable:
    """MIMIC-CXR-JPG: ``*-chexpert.csv`` (labels per study) + ``*-split.csv`` + ``*-metadata.csv``
    (one row per image) -> ``files/pNN/pSUBJECT/sSTUDY/DICOM_ID.jpg``."""
    vocab = vocabulary("mimic")
    split_table = split_table or _find_beside(chexpert_table, "*-split.csv*", "MIMIC split table")
    metadata_table = metadata_table or _find_beside(chexpert_table, "*-metadata.csv*", "MIMIC metadata table")
    labels = _read_csv(chexpert_table, ["subject_id", "study_id", *vocab.findings, vocab.normal_label],
                       "MIMIC label table")
    splits = _read_csv(split_table, ["dicom_id", "split"], "MIMIC split table")
    meta = _read_csv(metadata_table, ["dicom_id", "subject_id", "study_id"], "MIMIC metadata table")
    by_study = {(r["subject_id"], r["study_id"]): r for r in labels.to_dict("records")}
    split_of = dict(zip(splits["dicom_id"], splits["split"]))
    records, filtered = [], {}
    for i, row in enumerate(meta.to_dict("records")):
        view = row.get("ViewPosition", "").strip().upper()
        if views == "frontal" and view and view not in ("PA", "AP"):
            filtered[f"view {view}"] = filtered.get(f"view {view}", 0) + 1
            continue
        subject, study, dicom = row["subject_id"], row["study_id"], row["dicom_id"]
        path = f"files/p{subject[:2]}/p{subject}/s{study}/{dicom}.jpg"
        cells = by_study.get((subject, study))
        if cells is None:
            parsed, error, raw = None, f"no label row for study s{study} in {os.path.basename(chexpert_table)}", ""
        else:
            parsed, error = _labels(lambda c: chexpert_vector(c, vocab, UncertainPolicy(uncertain),
                                                              BlankPolicy(blank)), cells)
            raw = _raw(cells, vocab)
        records.append(SourceRecord(row=i, path=path, patient_id=f"p{subject}", labels=parsed,
                                    raw_labels=raw, label_error=error, view=view or None,
                                    split=_split_value(split_of.get(dicom))))
    return SourceTable("mimic", vocab, records,
                       {"kind": "mimic", "table": os.path.basename(chexpert_table),
                        "split_table": os.path.basename(split_table),
                        "metadata_table": os.path.basename(metadata_table), "views": views,
                        "uncertain_policy": uncertain, "blank_policy": blank}, filtered)


def read_folder(table: str, vocab: str = "nih", path_column: str = "Image Index",
                label_column: str = "Finding Labels", patient_column: str | None = None,
                split_column: str | None = None) -> SourceTable:
    """A plain CSV: one row per image, a path relative to the images folder and '|'-separated
    labels ('No Finding' for normals). Every other column is kept, snake_cased."""
    vocabulary_ = vocabulary(vocab)
    required = [path_column, label_column] + [c for c in (patient_column, split_column) if c]
    try:
        frame = _read_csv(table, required, "image table")
    except TableError as exc:
        if "lacks required column" not in str(exc):
            raise
        raise TableError(f"{exc}. Name the columns that hold the image path and the '|'-separated labels with "
                         f"--path-column and --label-column (dataset.path_column, dataset.label_column; the "
                         f"defaults are NIH's: {path_column!r}, {label_column!r})") from exc
    used = set(required)
    extra_columns = {c: _snake(c) for c in frame.columns if c not in used}
    records = []
    paths = _path_cells(table, frame, path_column)
    for i, cells in enumerate(frame.to_dict("records")):
        labels, error = _labels(lambda r: parse_label_list(r, vocabulary_), cells[label_column])
        split = cells[split_column] if split_column else None
        record = SourceRecord(row=i, path=paths[i],
                              patient_id=(cells[patient_column].strip() or None) if patient_column else None,
                              labels=labels, raw_labels=cells[label_column], label_error=error,
                              extra={v: cells[k] for k, v in extra_columns.items()})
        if split:
            record.split = _split_value(split)
            if record.split is None:
                record.label_error = f"unknown split {split!r}; use train, val or test"
        records.append(record)
    return SourceTable("folder", vocabulary_, records,
                       {"kind": "folder", "table": os.path.basename(table), "vocabulary": vocabulary_.name},
                       extra_columns=list(extra_columns.values()))


def _snake(name: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", name.strip().lower()).strip("_") or "column"


def _split_value(value: str | None) -> str | None:
    return SPLIT_SYNONYMS.get(str(value).strip().lower()) if value else None


@dataclass(frozen=True)
class Source:
    """A real source: its reader, the ``dataset:`` settings it takes (each also its
    ``tailforge ingest <name>`` flag: flows/cli_parser.py) and one line on its table."""
    read: Callable[..., SourceTable]  # read(table, **options)
    options: tuple[str, ...]
    table: str


# The real sources by name: the settings' choices, the CLI's `ingest` subcommands and the factory's
# ingest read this. Then the sources tasks/readers/ registers, one module each (a new option is
# also a DatasetSettings field).
READERS: Registry = Registry("tasks.readers", {
    "nih": Source(read_nih, ("bbox_table",),
                  "NIH ChestX-ray14: Data_Entry_2017*.csv (+ BBox_List_2017.csv beside it)"),
    "chexpert": Source(read_chexpert, ("views", "uncertain", "blank"),
                       "CheXpert train.csv/valid.csv (IMAGES: the folder holding CheXpert-v1.0*/)"),
    "mimic": Source(read_mimic, ("split_table", "metadata_table", "views", "uncertain", "blank"),
                    "MIMIC-CXR-JPG *-chexpert.csv (IMAGES: the folder holding files/)"),
    "folder": Source(read_folder, ("vocab", "path_column", "label_column", "patient_column", "split_column"),
                     "a folder of images and a CSV: path column + '|'-separated labels"),
})


def options_of(dataset) -> dict:
    """The reader options a settings ``dataset`` section gives its source's kind."""
    return {name: getattr(dataset, name) for name in READERS[dataset.source].options}


def read_source(kind: str, table: str, **options) -> SourceTable:
    """The one reader of every real source, for `tailforge ingest` and the factory's ingest step
    alike; each kind takes the options its ``Source`` names (flows/settings.py, DatasetSettings)."""
    if kind not in READERS:
        raise ValueError(f"unknown source {kind!r}; use one of {', '.join(READERS)}")
    source = READERS[kind]
    return source.read(table, **{name: value for name, value in options.items() if name in source.options})


def apply_split_csv(source: SourceTable, split_csv: str) -> int:
    """Override splits from a CSV with an image path column and a ``split`` column.
    Returns the number of records it set; images it does not list keep their split."""
    frame = _read_csv(split_csv, ["split"], "split table")
    key = next((c for c in ("Image Index", "path", "Path", "dicom_id") if c in frame.columns), None)
    if key is None:
        raise TableError(f"split table {split_csv} needs an image column: 'Image Index', 'path' or 'dicom_id'")
    bad = sorted({s for s in frame["split"] if _split_value(s) is None})
    if bad:
        raise TableError(f"split table {split_csv} has unknown split values {bad[:5]}; use train, val or test")
    split_of = {str(k).strip(): _split_value(s) for k, s in zip(frame[key], frame["split"])}
    matched = 0
    for record in source.records:
        name = record.path if key != "dicom_id" else os.path.splitext(os.path.basename(record.path))[0]
        split = split_of.get(name) or split_of.get(os.path.basename(record.path))
        if split:
            record.split = split
            matched += 1
    return matched


def default_split(patient_key: str, fractions: tuple[float, float] = (0.7, 0.8)) -> str:
    """Patient-disjoint 70/10/20 split from a hash of the patient id (or path)."""
    value = int(hashlib.sha256(patient_key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "train" if value < fractions[0] else "val" if value < fractions[1] else "test"
