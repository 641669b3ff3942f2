"""Builders for real test inputs: image files (PNG/JPEG in every mode, DICOM with real tags),
random patterns and NIH-style label tables."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
from PIL import Image


def gradient(height: int = 48, width: int = 40, top: int = 255) -> np.ndarray:
    """A non-constant test pattern with values 0..top."""
    yy, xx = np.mgrid[0:height, 0:width]
    return np.round((yy * width + xx) / (height * width - 1) * top).astype(np.int64)


def png_bytes(array: np.ndarray, mode: str | None = None, fmt: str = "PNG") -> bytes:
    image = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    sink = io.BytesIO()
    image.save(sink, format=fmt)
    return sink.getvalue()


def dicom_bytes(pixels: np.ndarray, *, photometric: str = "MONOCHROME2", bits_stored: int = 12,
                slope: float = 1.0, intercept: float = 0.0, window: tuple[float, float] | None = None,
                patient_name: str = "DOE^JANE") -> bytes:
    """An uncompressed DICOM file (Explicit VR Little Endian) holding ``pixels`` (uint16)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.AccessionNumber = patient_name, "MRN123", "19700101", "ACC9"
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits_stored, bits_stored - 1, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    sink = io.BytesIO()
    ds.save_as(sink, enforce_file_format=True)
    return sink.getvalue()


NIH_HEADER = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age",
              "Patient Gender", "View Position"]


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def pattern(seed: int, size: int = 40) -> np.ndarray:
    """A random 8-bit image: distinct seeds, distinct images."""
    return np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)
