"""The image reader on generated files of each kind Pillow opens: every image comes out as the 8-bit upright RGB
a viewer shows, every label exactly as stored or refused, and oversized files are refused from their header."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import ExifTags, Image, ImageOps

from recyclelora.cli.evaluate import DEFAULT_MAX_PIXELS as cli_default
from recyclelora.data.images import EXIF_TRANSPOSE, ImageFileError, read_image, read_label, read_pair
from recyclelora.data.pixel_limits import DEFAULT_MAX_PIXELS, PILLOW_MAX_PIXELS, check_max_pixels

H, W = 24, 32
PICTURE = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
GREY = PICTURE[:, :, 0]


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png(path: Path, width: int, height: int, depth: int, colour: int, rows: list[bytes] | None) -> Path:
    """A PNG written by hand (kinds Pillow cannot write); ``rows`` None: all-zero 8-bit grey rows, compressed as
    a stream so that a huge image takes little memory and disk (a 13000 x 13000 one: 165 KB)."""
    compressor = zlib.compressobj(9)
    if rows is None:
        zero_row = bytes(1 + width)
        data = b"".join(compressor.compress(zero_row) for _ in range(height))
    else:
        data = b"".join(compressor.compress(b"\0" + row) for row in rows)
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    body = (
        png_chunk(b"IHDR", header) + png_chunk(b"IDAT", data + compressor.flush()) + png_chunk(b"IEND", b"")
    )
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def write_huge_png(path: Path, side: int = 13000) -> Path:
    """A ``side`` x ``side`` all-black 8-bit grey PNG: valid, small on disk, ``side**2`` bytes once decoded."""
    return write_png(path, side, side, 8, 0, None)


def sixteen(values: np.ndarray) -> np.ndarray:
    """8-bit ``values`` as 16-bit ones of the same brightness, plus noise in the low byte (as a 16-bit camera
    or editor writes them): ``v * 257 + noise`` keeps ``>> 8`` within 1 of ``v``."""
    noise = np.random.default_rng(1).integers(0, 200, values.shape)
    return np.minimum(values.astype(np.uint32) * 257 + noise, 0xFFFF).astype(np.uint16)


def assert_close(actual: np.ndarray, expected: np.ndarray, tolerance: int) -> None:
    assert actual.shape == expected.shape and actual.dtype == np.uint8
    assert np.abs(actual.astype(int) - expected.astype(int)).max() <= tolerance


# --- 16-bit and other high-depth images --------------------------------------------------------------------


def test_a_16_bit_grey_png_reads_as_its_8_bit_version(tmp_path: Path) -> None:
    path = tmp_path / "grey16.png"
    Image.fromarray(sixteen(GREY)).save(path)
    with Image.open(path) as opened:
        assert opened.mode == "I;16"  # the mode that Image.convert("RGB") clips to white
        assert (np.asarray(opened.convert("RGB")) == 255).mean() > 0.95
    assert_close(read_image(path), np.repeat(GREY[:, :, None], 3, axis=2), 1)


def test_16_bit_big_endian_tiff_and_pgm_read_as_their_8_bit_versions(tmp_path: Path) -> None:
    values = sixteen(GREY)
    tiff = tmp_path / "grey16b.tif"
    Image.frombytes("I;16B", (W, H), values.astype(">u2").tobytes()).save(tiff)
    pgm = tmp_path / "grey16.pgm"  # Pillow opens 16-bit PGM files in mode I
    pgm.write_bytes(f"P5\n{W} {H}\n65535\n".encode() + values.astype(">u2").tobytes())
    for path, mode in ((tiff, "I;16B"), (pgm, "I")):
        with Image.open(path) as opened:
            assert opened.mode == mode
        assert_close(read_image(path), np.repeat(GREY[:, :, None], 3, axis=2), 1)


def test_48_and_64_bit_colour_pngs_read_as_their_8_bit_versions(tmp_path: Path) -> None:
    rgb16 = sixteen(PICTURE)
    cv2.imwrite(str(tmp_path / "rgb48.png"), rgb16[:, :, ::-1])  # OpenCV writes BGR
    opaque = np.concatenate([rgb16, np.full((H, W, 1), 0xFFFF, np.uint16)], axis=2)
    cv2.imwrite(str(tmp_path / "rgba64.png"), opaque[:, :, [2, 1, 0, 3]])
    for name in ("rgb48.png", "rgba64.png"):
        assert_close(read_image(tmp_path / name), PICTURE, 1)


def test_a_16_bit_grey_alpha_png_is_composited_over_white(tmp_path: Path) -> None:
    grey = sixteen(GREY)
    alpha = np.where(np.arange(W) < W // 2, 0xFFFF, 0).astype(np.uint16) * np.ones((H, 1), np.uint16)
    pairs = np.stack([grey, alpha], axis=2).astype(">u2")
    path = write_png(tmp_path / "la16.png", W, H, 16, 4, [row.tobytes() for row in pairs])
    image = read_image(path)
    assert_close(image[:, : W // 2], np.repeat(GREY[:, : W // 2, None], 3, axis=2), 1)
    assert (image[:, W // 2 :] == 255).all()


@pytest.mark.parametrize(
    ("name", "array", "fragment"),
    [
        ("float.tif", GREY.astype(np.float32) / 255, "mode 'F' (floating-point pixels have no fixed range)"),
        ("int32.tif", GREY.astype(np.int32) * 1000, "outside the 16-bit range 0..65535"),
    ],
)
def test_images_without_a_known_range_are_refused_naming_the_file(
    name: str, array: np.ndarray, fragment: str, tmp_path: Path
) -> None:
    path = tmp_path / name
    Image.fromarray(array).save(path)
    with pytest.raises(
        ImageFileError, match=rf"image {path} .*{fragment}".replace("(", r"\(").replace(")", r"\)")
    ):
        read_image(path)


# --- colour modes --------------------------------------------------------------------------------------------


def test_palette_grey_and_one_bit_images_read_as_their_colours(tmp_path: Path) -> None:
    palette = np.random.default_rng(2).integers(0, 256, (256, 3), dtype=np.uint8)
    image = Image.fromarray(GREY, "L").convert("P")  # mode P, indices = GREY
    image.putpalette(palette.ravel().tolist())
    image.save(tmp_path / "p.png")
    assert_close(read_image(tmp_path / "p.png"), palette[GREY], 0)
    Image.fromarray(GREY).save(tmp_path / "l.png")
    assert_close(read_image(tmp_path / "l.png"), np.repeat(GREY[:, :, None], 3, axis=2), 0)
    Image.fromarray(GREY > 127).save(tmp_path / "one.png")
    with Image.open(tmp_path / "one.png") as opened:
        assert opened.mode == "1"
    assert_close(read_image(tmp_path / "one.png"), np.repeat((GREY[:, :, None] > 127) * 255, 3, axis=2), 0)


def test_transparent_pixels_are_white_as_a_viewer_shows_them(tmp_path: Path) -> None:
    alpha = np.zeros((H, W), np.uint8)
    alpha[:, : W // 2], alpha[:, W // 2 : 3 * W // 4] = 255, 128
    Image.fromarray(np.dstack([PICTURE, alpha])).save(tmp_path / "rgba.png")
    Image.fromarray(np.dstack([GREY, alpha])).save(tmp_path / "la.png")
    palette = Image.fromarray(GREY).convert("P")
    palette.save(tmp_path / "pt.png", transparency=int(GREY[0, 0]))
    for name, colours in (("rgba.png", PICTURE), ("la.png", np.repeat(GREY[:, :, None], 3, axis=2))):
        image = read_image(tmp_path / name)
        assert_close(image[:, : W // 2], colours[:, : W // 2], 0)
        blend = (colours[:, W // 2 : 3 * W // 4].astype(int) * 128 + 255 * 127) / 255
        assert_close(image[:, W // 2 : 3 * W // 4], blend.round().astype(np.uint8), 1)
        assert (image[:, 3 * W // 4 :] == 255).all()
    keyed = read_image(tmp_path / "pt.png")
    assert (keyed[GREY == GREY[0, 0]] == 255).all()
    assert_close(keyed[GREY != GREY[0, 0]], np.repeat(GREY[GREY != GREY[0, 0], None], 3, axis=1), 0)


def test_cmyk_images_read_as_their_rgb(tmp_path: Path) -> None:
    cmyk = Image.fromarray(PICTURE).convert("CMYK")
    cmyk.save(tmp_path / "cmyk.tif")
    cmyk.save(tmp_path / "cmyk.jpg", quality=100)
    with Image.open(tmp_path / "cmyk.jpg") as opened:
        assert opened.mode == "CMYK"
    assert_close(read_image(tmp_path / "cmyk.tif"), PICTURE, 0)
    assert np.abs(read_image(tmp_path / "cmyk.jpg").astype(int) - PICTURE).mean() < 8  # JPEG's loss only


# --- EXIF orientation ----------------------------------------------------------------------------------------


def rotated_jpeg(path: Path, upright: np.ndarray, orientation: int) -> Path:
    """``upright`` stored so that EXIF ``orientation`` turns it upright again, as a camera held sideways does."""
    inverse = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}.get(orientation)
    stored = Image.fromarray(upright) if inverse is None else Image.fromarray(upright).transpose(inverse)
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    stored.save(path, quality=100, subsampling=0, exif=exif)
    return path


def smooth_picture(height: int, width: int) -> np.ndarray:
    """Gradients (JPEG keeps them within a few levels) with a corner mark that shows which way is up."""
    y, x = np.mgrid[0:height, 0:width]
    picture = np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)], axis=2)
    picture[:6, :6] = (255, 0, 0)
    return picture.astype(np.uint8)


def test_an_exif_rotated_jpeg_reads_upright(tmp_path: Path) -> None:
    upright = smooth_picture(H, W)
    path = rotated_jpeg(tmp_path / "sideways.jpg", upright, 6)
    with Image.open(path) as opened:
        assert opened.size == (H, W)  # stored sideways
    image = read_image(path)
    assert image.shape == (H, W, 3)
    assert np.abs(image.astype(int) - upright).mean() < 3


@pytest.mark.parametrize("orientation", range(1, 9))
def test_the_orientation_table_is_pillows(orientation: int, tmp_path: Path) -> None:
    path = tmp_path / "o.jpg"
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    Image.fromarray(smooth_picture(H, W)).save(path, exif=exif)
    with Image.open(path) as opened:
        expected = np.asarray(ImageOps.exif_transpose(opened).convert("RGB"))
    assert np.array_equal(read_image(path), expected)
    assert orientation == 1 or orientation in EXIF_TRANSPOSE


def test_a_label_takes_its_images_orientation_and_ignores_its_own(tmp_path: Path) -> None:
    upright = smooth_picture(H, W)
    image_path = rotated_jpeg(tmp_path / "sideways.jpg", upright, 6)
    upright_label = np.arange(H * W, dtype=np.uint32).reshape(H, W).astype(np.uint8)
    stored_label = np.asarray(Image.fromarray(upright_label).transpose(Image.Transpose.ROTATE_90))
    label_path = tmp_path / "label.png"
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 3  # a stray tag on the label: not applied
    Image.fromarray(stored_label).save(label_path, exif=exif)
    assert np.array_equal(read_label(label_path), stored_label)
    image, label = read_pair(image_path, label_path)
    assert image.shape[:2] == label.shape == (H, W)
    assert np.array_equal(label, upright_label)


# --- labels --------------------------------------------------------------------------------------------------


def test_labels_read_their_stored_values_exactly(tmp_path: Path) -> None:
    values = (GREY % 40).astype(np.uint8)
    Image.fromarray(values).save(tmp_path / "l.png")
    palette = Image.fromarray(values, "L").convert("P")  # indices = values, colours = grey
    palette.putpalette(np.random.default_rng(3).integers(0, 256, 768).tolist())
    palette.save(tmp_path / "p.png")
    Image.fromarray(values.astype(np.uint16)).save(tmp_path / "i16.png")
    for name, mode in (("l.png", "L"), ("p.png", "P"), ("i16.png", "I;16")):
        with Image.open(tmp_path / name) as opened:
            assert opened.mode == mode
        label = read_label(tmp_path / name)
        assert label.dtype == np.uint8 and np.array_equal(label, values), name


def test_labels_that_are_not_class_values_are_refused_naming_file_and_mode(tmp_path: Path) -> None:
    Image.fromarray(PICTURE).save(tmp_path / "colour.png")
    Image.fromarray(np.full((H, W), 300, np.uint16)).save(tmp_path / "big16.png")
    Image.fromarray(GREY > 127).save(tmp_path / "one.png")
    nibbles = (GREY[:, 0::2] // 16) << 4 | (GREY[:, 1::2] // 16)
    write_png(tmp_path / "grey4.png", W, H, 4, 0, [row.astype(np.uint8).tobytes() for row in nibbles])
    cases = {
        "colour.png": "has PIL mode 'RGB', not one class value per pixel",
        "big16.png": "holds values from 300 to 300; class values must be 0..255",
        "one.png": "is a 1-bit grey PNG",
        "grey4.png": "is a 4-bit grey PNG, whose values decoders scale to 0..255",
    }
    for name, fragment in cases.items():
        with pytest.raises(ImageFileError, match=rf"label {tmp_path / name} .*") as raised:
            read_label(tmp_path / name)
        assert fragment in str(raised.value), raised.value


# --- unreadable and oversized files --------------------------------------------------------------------------


def test_missing_truncated_and_non_image_files_name_the_file(tmp_path: Path) -> None:
    Image.fromarray(PICTURE).save(tmp_path / "cut.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "cut.png").read_bytes()[:-60])
    (tmp_path / "text.png").write_text("not an image")
    for name, fragment in (
        ("missing.png", "does not exist"),
        ("cut.png", "truncated"),
        ("text.png", "corrupt"),
    ):
        with pytest.raises(ImageFileError, match=rf"{tmp_path / name} .*{fragment}"):
            read_image(tmp_path / name)


def test_an_image_above_max_pixels_is_refused_from_its_header(tmp_path: Path) -> None:
    Image.fromarray(PICTURE).save(tmp_path / "small.png")
    assert read_image(tmp_path / "small.png", max_pixels=H * W).shape == (H, W, 3)
    with pytest.raises(ImageFileError, match=rf"small.png is too large to read: {W} x {H} = {H * W} pixels, above "
                       rf"the limit of {H * W - 1} pixels"):  # fmt: skip
        read_image(tmp_path / "small.png", max_pixels=H * W - 1)
    with pytest.raises(ImageFileError, match="too large"):
        read_label(tmp_path / "small.png", max_pixels=10)


def test_a_file_over_pillows_own_limit_is_one_error(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)  # the header is all Pillow reads first
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IEND", b""))
    with pytest.raises(ImageFileError, match=rf"bomb.png is too large to read: over Pillow's own limit of "
                       rf"{PILLOW_MAX_PIXELS} pixels"):  # fmt: skip
        read_image(path, max_pixels=PILLOW_MAX_PIXELS)


def test_max_pixels_is_validated() -> None:
    assert check_max_pixels(DEFAULT_MAX_PIXELS) == DEFAULT_MAX_PIXELS == cli_default  # spelled out for --help
    for bad in (0, PILLOW_MAX_PIXELS + 1, 1.5, True):
        with pytest.raises(ValueError, match="must be a whole number of pixels from 1 to"):
            check_max_pixels(bad)


#: Reads a small image, then the huge one; prints the peak resident memory after each (KiB) and the seconds the
#: refusal took.
MEASURE = """
import json, resource, sys, time
from recyclelora.data.images import ImageFileError, read_image
read_image(sys.argv[1])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
try:
    read_image(sys.argv[2])
except ImageFileError as error:
    message = str(error)
seconds = time.perf_counter() - start
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"before": before, "after": after, "seconds": seconds, "message": message}))
"""


def test_a_13000_pixel_square_png_fails_fast_without_allocating(tmp_path: Path) -> None:
    """A 165 KB PNG under Pillow's limit that decodes to 169 MB (507 MB as RGB, 2 GB as float): refused from
    its header, so the process's peak memory does not grow."""
    huge = write_huge_png(tmp_path / "huge.png")
    assert huge.stat().st_size < 1_000_000
    Image.fromarray(PICTURE).save(tmp_path / "small.png")
    run = subprocess.run(
        [sys.executable, "-c", MEASURE, str(tmp_path / "small.png"), str(huge)],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    measured = json.loads(run.stdout)
    assert "13000 x 13000 = 169000000 pixels, above the limit of 67108864" in measured["message"]
    assert measured["after"] - measured["before"] < 16 * 1024, measured  # KiB: far below the 169 MB decode
    assert measured["seconds"] < 1.0, measured


def test_a_huge_png_helper_is_a_valid_image(tmp_path: Path) -> None:
    """The generated file is what it claims: Pillow decodes a small one of the same making."""
    path = write_png(tmp_path / "zeros.png", 300, 200, 8, 0, None)
    with Image.open(path) as opened:
        assert opened.mode == "L" and opened.size == (300, 200) and not np.asarray(opened).any()
