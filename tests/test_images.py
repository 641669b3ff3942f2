import numpy as np
import pytest

from tasks.images import (ImageError, content_id, decode, decode_mask, decode_png, encode_mask, encode_png,
                          resize_square)
from tests.imagefiles import dicom_bytes, gradient, png_bytes


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "LA", "P"])
def test_8bit_modes_become_one_channel(mode):
    gray = gradient().astype(np.uint8)
    decoded = decode(png_bytes(gray, mode))
    assert decoded.pixels.dtype == np.uint8 and decoded.pixels.shape == gray.shape
    if mode != "P":  # a palette quantises; every other mode keeps gray values exactly
        assert np.array_equal(decoded.pixels, gray)


def test_rgba_alpha_is_dropped_not_composited():
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = 200, 0  # fully transparent but bright
    assert (decode(png_bytes(rgba)).pixels == 200).all()


def test_16bit_png_stays_16bit():
    wide = gradient(top=65535).astype(np.uint16)
    decoded = decode(png_bytes(wide))
    assert decoded.bit_depth == 16 and np.array_equal(decoded.pixels, wide)


def test_jpeg_decodes_close_to_source():
    gray = gradient().astype(np.uint8)
    decoded = decode(png_bytes(gray, "RGB", fmt="JPEG"))
    assert decoded.pixels.dtype == np.uint8 and np.abs(decoded.pixels.astype(int) - gray).mean() < 3


def test_dicom_monochrome2_applies_rescale_and_keeps_16bit():
    raw = gradient(top=4095).astype(np.uint16)
    decoded = decode(dicom_bytes(raw, slope=2.0, intercept=-100.0))
    assert decoded.bit_depth == 16
    assert decoded.pixels[0, 0] == 0 and decoded.pixels[-1, -1] == 65535
    assert np.all(np.diff(decoded.pixels.astype(int), axis=1) >= 0)  # monotone, not inverted


def test_dicom_monochrome1_is_inverted():
    raw = gradient(top=4095).astype(np.uint16)
    plain = decode(dicom_bytes(raw)).pixels.astype(int)
    inverted = decode(dicom_bytes(raw, photometric="MONOCHROME1")).pixels.astype(int)
    assert np.abs(plain + inverted - 65535).max() <= 1


def test_dicom_voi_window_is_applied():
    raw = gradient(top=4095).astype(np.uint16)
    windowed = decode(dicom_bytes(raw, window=(1000.0, 200.0))).pixels
    # values below the window saturate to black, above it to white
    assert (windowed[raw < 880] == 0).all() and (windowed[raw > 1120] == 65535).all()


def test_dicom_8bit_gives_8bit():
    raw = gradient(top=255).astype(np.uint16)
    assert decode(dicom_bytes(raw, bits_stored=8)).pixels.dtype == np.uint8


@pytest.mark.parametrize("data,code", [
    (b"", "zero_byte"),
    (b"hello, this is a text file", "not_an_image"),
    (png_bytes(gradient().astype(np.uint8))[:150], "truncated"),
    (b"\0" * 128 + b"DICM" + b"\x02\x00", "unreadable"),
])
def test_bad_bytes_raise_coded_errors(data, code):
    with pytest.raises(ImageError) as info:
        decode(data)
    assert info.value.code == code and str(info.value)


def test_decompression_bomb_is_refused_before_decoding():
    big = png_bytes(np.zeros((300, 300), np.uint8))
    with pytest.raises(ImageError) as info:
        decode(big, max_pixels=200 * 200)
    assert info.value.code == "decompression_bomb"


def test_resize_rule_centre_crops_then_resamples():
    tall = np.zeros((120, 80), np.uint8)
    tall[:20] = 255  # top margin: cropped away
    tall[20:100] = np.arange(80, dtype=np.uint8)[None, :]  # the centred 80x80 square
    out = resize_square(tall, 40)
    assert out.shape == (40, 40) and out.dtype == np.uint8
    assert out.max() < 100  # no trace of the white margin
    assert np.all(np.diff(out[20].astype(int)) >= 0)  # left-to-right ramp survives
    wide16 = (gradient(64, 96, 65535)).astype(np.uint16)
    assert resize_square(wide16, 32).dtype == np.uint16


def test_png_round_trip_and_content_id():
    for pixels in (gradient().astype(np.uint8), gradient(top=65535).astype(np.uint16)):
        assert np.array_equal(decode_png(encode_png(pixels)), pixels)
        assert encode_png(pixels) == encode_png(pixels.copy())  # same content, same bytes
    a = gradient().astype(np.uint8)
    b = a.copy()
    b[0, 0] ^= 1
    assert content_id(a) == content_id(a.copy()) != content_id(b)
    assert content_id(a) != content_id(a.astype(np.uint16))
    mask = a > 100
    assert np.array_equal(decode_mask(encode_mask(mask)), mask)


# ---------------------------------------------------------------- issue 12, low items
def _with_bad_crc(png: bytes, chunk: bytes) -> bytes:
    """The PNG with the CRC of its first ``chunk`` chunk flipped (the chunk's data intact)."""
    start = png.index(chunk) - 4
    length = int.from_bytes(png[start:start + 4], "big")
    crc_at = start + 8 + length
    return png[:crc_at] + bytes(b ^ 0xFF for b in png[crc_at:crc_at + 4]) + png[crc_at + 4:]


def test_png_with_a_bad_crc_is_corrupt_not_truncated():
    png = png_bytes(gradient().astype(np.uint8))
    with pytest.raises(ImageError) as caught:
        decode(_with_bad_crc(png, b"IHDR"))
    assert caught.value.code == "corrupt"
    try:  # Pillow does not check IDAT CRCs: intact pixels decode, and if it ever does, the code is corrupt
        assert (decode(_with_bad_crc(png, b"IDAT")).pixels == decode(png).pixels).all()
    except ImageError as exc:
        assert exc.code == "corrupt"
    flipped = bytearray(png)
    flipped[png.index(b"IDAT") + 6] ^= 0xFF  # damaged data: its CRC no longer matches
    with pytest.raises(ImageError) as caught:
        decode(bytes(flipped))
    assert caught.value.code == "corrupt"
    with pytest.raises(ImageError) as caught:
        decode(png[:150])
    assert caught.value.code == "truncated"


@pytest.mark.parametrize("shape", [(1, 1), (20, 2000), (400, 50), (8, 8)])
def test_implausible_sizes_are_refused(shape):
    from tasks.images import check_plausible

    with pytest.raises(ImageError) as caught:
        check_plausible(decode(png_bytes(np.full(shape, 128, np.uint8))))
    assert caught.value.code == "implausible_size"


def test_plausible_sizes_pass():
    from tasks.images import check_plausible

    for shape in ((48, 40), (2048, 2500), (64, 200)):
        check_plausible(decode(png_bytes(np.full(shape, 128, np.uint8))))


def test_exif_orientation_is_applied():
    import io

    from PIL import Image

    stored = np.zeros((40, 60), np.uint8)
    stored[:, :30] = 255  # left half white as stored
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    sink = io.BytesIO()
    image.save(sink, format="JPEG", exif=exif.tobytes(), quality=95)
    decoded = decode(sink.getvalue())
    assert decoded.pixels.shape == (60, 40) and (decoded.original_height, decoded.original_width) == (60, 40)
    assert decoded.pixels[:30].mean() > 200 and decoded.pixels[30:].mean() < 50  # white half now on top
