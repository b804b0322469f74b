"""The one reader of image and label files: images as a viewer shows them, labels exactly as stored.

Every file is opened lazily and its size checked from the header against ``max_pixels`` before any pixel is
decoded (:data:`DEFAULT_MAX_PIXELS`, at most :data:`PILLOW_MAX_PIXELS`), so an oversized or decompression-bomb
file is refused without allocating it.

Images (:func:`read_image`) become ``(H, W, 3)`` uint8 RGB arrays:

- turned upright by their EXIF orientation (:data:`EXIF_TRANSPOSE`, the table of ``PIL.ImageOps.exif_transpose``);
- 16-bit grey (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``, and ``I`` with values 0..65535, as Pillow opens 16-bit
  PGM files) scaled to 8 bits by ``value >> 8``, so the 8- and 16-bit versions of a picture agree within 1
  (Pillow already reduces 48/64-bit RGB(A) PNGs and 16-bit grey-alpha PNGs to 8 bits per channel this way);
- with transparency (RGBA, LA, PA, a palette or colour key with a transparent entry) composited over white, as
  a viewer on a white page shows them; palette, grey, 1-bit, CMYK and YCbCr converted by Pillow to RGB;
- refused in one line naming the file otherwise: floating-point (``F``) images have no fixed range, ``I``
  images with values outside 0..65535 no known depth, and other modes (LAB, HSV, ...) no conversion here.

Labels (:func:`read_label`) become ``(H, W)`` uint8 arrays of the stored class values: grey (``L``) levels,
palette (``P``) indices (never their colours) or 16-bit grey values below 256. A colour label (RGB, RGBA, ...),
a grey PNG of 1, 2 or 4 bits (decoders scale its values up to 0..255), a 16-bit value above 255 or any other
mode is refused naming the file and its mode.

A label is the per-pixel annotation of its image's pixels *as stored*: its own EXIF orientation is ignored,
and a pair read together (:func:`read_pair`) gets the image's orientation on both, so image and label stay
aligned and come out upright. A label drawn on an upright view of a rotated (90 or 270 degree) image then has
the wrong size and is refused by the callers' size checks; one drawn on a 180-degree or mirrored view cannot
be told apart.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image

from recyclelora.data.pixel_limits import DEFAULT_MAX_PIXELS, PILLOW_MAX_PIXELS
from recyclelora.errors import InvalidInputError

PathLike = str | os.PathLike[str]

#: EXIF orientation (tag 0x0112) -> the transpose that makes the stored pixels upright (the EXIF 2.3 table, as
#: in ``PIL.ImageOps.exif_transpose``); 1 and unknown values need none.
EXIF_TRANSPOSE: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
#: Grey modes holding 16-bit values, read as ``value >> 8`` for images and exactly (below 256) for labels.
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
#: Modes with an alpha channel, composited over white.
ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
#: Modes Pillow converts to RGB as a viewer shows them.
RGB_CONVERTIBLE_MODES = frozenset({"RGB", "RGBX", "L", "1", "P", "CMYK", "YCbCr"})
#: PNG pixel formats of grey images under 8 bits, which Pillow scales to 0..255 when it decodes them.
_SCALED_GREY = {"1": 1, "L;1": 1, "L;2": 2, "L;4": 4}
_WHITE = (255, 255, 255, 255)


class ImageFileError(InvalidInputError):
    """An image or label file that is missing, corrupt, too large or of a kind that cannot be read as it is
    meant; the message names the file and what to do."""


@contextlib.contextmanager
def open_image(path: PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[Image.Image]:
    """``path`` opened by Pillow, its header read and its size checked against ``max_pixels``, no pixel decoded.

    Raises :class:`ImageFileError` for a missing file, one Pillow cannot identify, one above ``max_pixels`` (or
    Pillow's own limit) and, inside the block, for a file that fails to decode (truncated, corrupt).
    """
    path = Path(path)
    if not path.is_file():
        raise ImageFileError(f"{path} does not exist: check the path")
    try:
        with warnings.catch_warnings():  # Pillow warns from MAX_IMAGE_PIXELS on: max_pixels is the limit here
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(path)
        with opened as image:
            pixels = image.width * image.height
            if pixels > max_pixels:
                raise _too_large(path, f"{image.width} x {image.height} = {pixels} pixels", max_pixels)
            yield image
    except Image.DecompressionBombError:
        raise _too_large(path, f"over Pillow's own limit of {PILLOW_MAX_PIXELS} pixels", max_pixels) from None
    except (OSError, SyntaxError) as error:  # Pillow's errors for unknown, truncated or corrupt files
        raise ImageFileError(
            f"{path} is truncated, corrupt or not an image Pillow reads ({error}): restore or replace it"
        ) from None


def _too_large(path: Path, size: str, max_pixels: int) -> ImageFileError:
    return ImageFileError(
        f"image {path} is too large to read: {size}, above the limit of {max_pixels} pixels (a huge or "
        "decompression-bomb file); shrink it, or raise the limit (--max-pixels, eval.max_pixels) if it is "
        "genuine and fits in memory"
    )


def exif_transpose_of(image: Image.Image) -> Image.Transpose | None:
    """The transpose that makes ``image`` upright by its EXIF orientation; None when it already is."""
    return EXIF_TRANSPOSE.get(image.getexif().get(ExifTags.Base.Orientation, 1))


def orient(array: np.ndarray, transpose: Image.Transpose | None) -> np.ndarray:
    """``array`` (``(H, W)`` or ``(H, W, 3)``, uint8 or uint16) transposed by ``transpose`` (None: as it is)."""
    return array if transpose is None else np.asarray(Image.fromarray(array).transpose(transpose))


def rgb_pixels(image: Image.Image, path: PathLike) -> np.ndarray:
    """The decoded pixels of an opened ``image`` as ``(H, W, 3)`` uint8 RGB in stored orientation (see the module
    docstring for each mode); refuses a mode without a faithful 8-bit RGB form."""
    mode = image.mode
    if mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image)
        if mode == "I" and values.size and (values.min() < 0 or values.max() > 0xFFFF):
            raise ImageFileError(
                f"image {path} has 32-bit integer pixels from {values.min()} to {values.max()}, outside the 16-bit "
                "range 0..65535, so their brightness is unknown: save it as an 8- or 16-bit image"
            )
        grey = (values.astype(np.uint32) >> 8).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode in ALPHA_MODES or (mode in RGB_CONVERTIBLE_MODES and "transparency" in image.info):
        background = Image.new("RGBA", image.size, _WHITE)
        return np.asarray(Image.alpha_composite(background, image.convert("RGBA")).convert("RGB"))
    if mode in RGB_CONVERTIBLE_MODES:
        return np.asarray(image.convert("RGB"))
    hint = (
        "floating-point pixels have no fixed range" if mode == "F" else "no faithful conversion to 8-bit RGB"
    )
    raise ImageFileError(
        f"image {path} has PIL mode {mode!r} ({hint}): save it as an 8- or 16-bit RGB or grey image"
    )


def label_values(image: Image.Image, path: PathLike) -> np.ndarray:
    """The class values of an opened label ``image`` as ``(H, W)`` uint8, exactly as stored: grey levels,
    palette indices or 16-bit values below 256; anything else is refused naming the file and its mode."""
    mode = image.mode
    rawmode = image.tile[0].args if image.format == "PNG" and image.tile else None
    if mode in ("L", "1") and rawmode in _SCALED_GREY:
        raise ImageFileError(
            f"label {path} is a {_SCALED_GREY[rawmode]}-bit grey PNG, whose values decoders scale to 0..255: "
            "save the class values as an 8-bit grey or palette PNG"
        )
    if mode in ("L", "P"):
        return np.asarray(image)
    if mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image)
        if values.size and (values.min() < 0 or values.max() > 255):
            raise ImageFileError(
                f"label {path} ({mode}) holds values from {values.min()} to {values.max()}; class values must be "
                "0..255: save them as an 8-bit grey or palette PNG"
            )
        return values.astype(np.uint8)
    raise ImageFileError(
        f"label {path} has PIL mode {mode!r}, not one class value per pixel (8-bit grey, palette indices, or "
        "16-bit grey below 256); a colour label (such as Cityscapes' *_color.png) is not one: use the "
        "dataset's id or trainId labels"
    )


def read_image(path: PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """An image file as an upright ``(H, W, 3)`` uint8 RGB array, as a viewer shows it (module docstring)."""
    with open_image(path, max_pixels) as image:
        return orient(rgb_pixels(image, path), exif_transpose_of(image))


def read_label(path: PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A label file's class values as stored: ``(H, W)`` uint8, without any orientation of its own."""
    with open_image(path, max_pixels) as image:
        return label_values(image, path)


def read_pair(
    image_path: PathLike, label_path: PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[np.ndarray, np.ndarray]:
    """An image (as :func:`read_image`) and its label (as :func:`read_label`), both given the image's EXIF
    orientation, so they stay aligned. Sizes are not compared here."""
    with open_image(image_path, max_pixels) as image:
        transpose = exif_transpose_of(image)
        pixels = rgb_pixels(image, image_path)
    values = read_label(label_path, max_pixels=max_pixels)
    return orient(pixels, transpose), orient(values, transpose)
