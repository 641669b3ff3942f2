"""Decode PNG / JPEG / DICOM into one-channel arrays, resize by one documented rule, encode PNG.

Every failure is an ``ImageError`` with a short ``code`` (for counting) and a message saying
what is wrong, so the ingest can quarantine the row and go on.

Resize rule: the longer side is centre-cropped to a square, then the square is resampled to
``size`` x ``size`` with a Lanczos filter in float32 and rounded back to the source bit depth
(8 or 16). Chest films are near-square; the crop trims the film's margins (neck, abdomen),
never the lungs' width on a portrait film.
"""

from __future__ import annotations

import hashlib
import io
import struct
import warnings
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 64_000_000  # 8000 x 8000: larger than any radiograph
DEFAULT_MIN_SIDE = 16  # pixels; a radiograph is hundreds of pixels a side, a 1x1 file is not one
DEFAULT_MAX_ASPECT = 4.0  # longer side / shorter side; films are near-square (a 20000x20 strip is not one)
DICOM_MAGIC_OFFSET = 128
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EXIF_ORIENTATION = 0x0112


class ImageError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class DecodedImage:
    pixels: np.ndarray  # (H, W) uint8 or uint16
    original_height: int
    original_width: int

    @property
    def bit_depth(self) -> int:
        return 16 if self.pixels.dtype == np.uint16 else 8


def is_dicom(data: bytes) -> bool:
    return data[DICOM_MAGIC_OFFSET:DICOM_MAGIC_OFFSET + 4] == b"DICM"


def decode(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Bytes of a PNG, JPEG (or any Pillow format) or DICOM file -> one channel."""
    if len(data) == 0:
        raise ImageError("zero_byte", "the file is empty (0 bytes)")
    if is_dicom(data):
        return _decode_dicom(data, max_pixels)
    return _decode_pillow(data, max_pixels)


def _decode_pillow(data: bytes, max_pixels: int) -> DecodedImage:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageError("decompression_bomb",
                                 f"{width}x{height} pixels exceeds the limit of {max_pixels:,}")
            image.load()
            image = _upright(image)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError("decompression_bomb", str(exc)) from exc
    except UnidentifiedImageError as exc:
        if data.startswith(PNG_SIGNATURE):  # a PNG whose header chunk is damaged
            raise ImageError(_png_damage(data, ""), f"damaged PNG: {exc}") from exc
        raise ImageError("not_an_image", "not a PNG, JPEG, DICOM or other readable image") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(_damage(data, str(exc)), f"cannot decode image: {exc}") from exc
    return DecodedImage(_to_one_channel(image), image.height, image.width)


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag (JPEGs from cameras and phones), as a viewer would."""
    if image.getexif().get(EXIF_ORIENTATION, 1) in (2, 3, 4, 5, 6, 7, 8):
        return ImageOps.exif_transpose(image)
    return image


def _damage(data: bytes, text: str) -> str:
    """truncated (the file ends early), corrupt (its bytes are damaged) or unreadable."""
    if data.startswith(PNG_SIGNATURE):
        return _png_damage(data, text)
    if "truncated" in text:
        return "truncated"
    return "corrupt" if "broken" in text or "corrupt" in text or "invalid" in text.lower() else "unreadable"


def _png_damage(data: bytes, text: str) -> str:
    """Walk a PNG's chunks (PNG spec 5.3: length, type, data, CRC-32 over type and data)."""
    offset = len(PNG_SIGNATURE)
    while offset + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[offset:offset + 8])
        end = offset + 8 + length + 4
        if end > len(data):
            return "truncated"
        (crc,) = struct.unpack(">I", data[end - 4:end])
        if zlib.crc32(data[offset + 4:end - 4]) != crc:
            return "corrupt"
        if kind == b"IEND":  # every chunk whole and checksummed, yet undecodable
            return "truncated" if "truncated" in text else "corrupt"
        offset = end
    return "truncated"  # no IEND


def check_plausible(image: DecodedImage, min_side: int = DEFAULT_MIN_SIDE,
                    max_aspect: float = DEFAULT_MAX_ASPECT) -> None:
    """Refuse sizes no chest film has, before one reaches training as a normal image."""
    short, long = sorted((image.original_height, image.original_width))
    if short < min_side:
        raise ImageError("implausible_size", f"{image.original_width}x{image.original_height} pixels: a side under "
                         f"{min_side} px is not a radiograph")
    if long / short > max_aspect:
        raise ImageError("implausible_size", f"{image.original_width}x{image.original_height} pixels: an aspect "
                         f"ratio of {long / short:.1f}:1 (over {max_aspect:g}:1) is not a chest film")


def _to_one_channel(image: Image.Image) -> np.ndarray:
    """L / RGB / RGBA / LA / P / I;16 / I / F -> (H, W) uint8 or uint16.

    Alpha is dropped (an X-ray has no transparency; compositing would darken the film),
    colour becomes luminance (ITU-R 601-2, Pillow's rule), 16-bit stays 16-bit.
    """
    mode = image.mode
    if mode in ("1", "L", "P", "RGB", "RGBA", "LA", "CMYK", "YCbCr", "PA", "La", "RGBa"):
        if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
            image = image.convert("RGB") if mode in ("RGBA", "PA", "RGBa") else image.getchannel(0)
        return np.asarray(image.convert("L"), dtype=np.uint8)
    if mode.startswith("I;16") or mode in ("I", "F"):
        array = np.asarray(image)
        if array.dtype.kind == "f" or array.min() < 0 or array.max() > 65535:
            return _scale_to(array.astype(np.float64), np.uint16)
        return array.astype(np.uint16)
    raise ImageError("unsupported_mode", f"unsupported image mode {mode!r}")


def _decode_dicom(data: bytes, max_pixels: int) -> DecodedImage:
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        rows, cols = int(ds.Rows), int(ds.Columns)
    except Exception as exc:  # pydicom raises many types on bad files
        raise ImageError("unreadable", f"cannot read DICOM: {exc}") from exc
    if rows * cols > max_pixels:
        raise ImageError("decompression_bomb", f"{cols}x{rows} pixels exceeds the limit of {max_pixels:,}")
    try:
        raw = ds.pixel_array
    except Exception as exc:
        raise ImageError("unreadable", f"cannot decode DICOM pixel data "
                         f"(transfer syntax {ds.file_meta.get('TransferSyntaxUID', '?')}): {exc}") from exc
    if raw.ndim != 2:
        raise ImageError("unsupported_mode", f"DICOM pixel array has shape {raw.shape}; expected one frame, one channel")
    values = apply_voi_lut(apply_modality_lut(raw, ds), ds).astype(np.float64)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        values = values.max() + values.min() - values  # MONOCHROME1: low values are white
    bits = int(ds.get("BitsStored", 8))
    target = np.uint16 if bits > 8 else np.uint8
    return DecodedImage(_scale_to(values, target), rows, cols)


def _scale_to(values: np.ndarray, dtype) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    top = np.iinfo(dtype).max
    if high <= low:
        return np.zeros(values.shape, dtype=dtype)
    return np.round((values - low) * (top / (high - low))).astype(dtype)


def resize_square(pixels: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop to a square, Lanczos-resample to ``size``, keep dtype (module docstring)."""
    height, width = pixels.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = pixels[top:top + side, left:left + side]
    if side == size:
        return np.ascontiguousarray(square)
    resized = Image.fromarray(square.astype(np.float32)).resize((size, size), Image.LANCZOS)
    top_value = np.iinfo(pixels.dtype).max
    return np.clip(np.round(np.asarray(resized)), 0, top_value).astype(pixels.dtype)


def encode_png(pixels: np.ndarray) -> bytes:
    """(H, W) uint8 -> 8-bit grayscale PNG; uint16 -> 16-bit grayscale PNG."""
    if pixels.dtype not in (np.uint8, np.uint16) or pixels.ndim != 2:
        raise ValueError(f"encode_png takes a 2-D uint8 or uint16 array, got {pixels.dtype} {pixels.shape}")
    image = Image.fromarray(np.ascontiguousarray(pixels))  # uint8 -> "L", uint16 -> "I;16"
    sink = io.BytesIO()
    image.save(sink, format="PNG", optimize=False, compress_level=6)
    return sink.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """A PNG written by ``encode_png`` -> (H, W) uint8 or uint16."""
    image = Image.open(io.BytesIO(data))
    array = np.asarray(image)
    return array.astype(np.uint16) if image.mode.startswith("I") else array.astype(np.uint8)


def content_id(pixels: np.ndarray) -> str:
    """sha256 of the pixel content (dtype, shape and values): the stable id of a real image."""
    digest = hashlib.sha256(f"{pixels.dtype.str}{pixels.shape}".encode())
    digest.update(np.ascontiguousarray(pixels).tobytes())
    return digest.hexdigest()


def encode_mask(mask: np.ndarray) -> bytes:
    """Boolean (H, W) mask -> 8-bit PNG, 255 inside (the project's convention: 1 = region)."""
    return encode_png(np.where(np.asarray(mask, dtype=bool), 255, 0).astype(np.uint8))


def decode_mask(data: bytes) -> np.ndarray:
    return decode_png(data) > 127
