"""How large an image may be read: the default limit and Pillow's own (a decompression bomb is refused from its
header). Light: the params validate against it without the image reader."""

from __future__ import annotations

from PIL import Image

from recyclelora.errors import InvalidInputError

#: Pillow refuses to open an image above this many pixels (twice ``Image.MAX_IMAGE_PIXELS``); a larger
#: ``max_pixels`` could never take effect.
PILLOW_MAX_PIXELS = 2 * Image.MAX_IMAGE_PIXELS
#: Largest image (width x height) read by default: 64 megapixels, 8192 x 8192, about 2.5 times the largest
#: camera photos of the supported datasets (Mapillary Vistas: phone and action-camera photos, about 25 MP at
#: most; Cityscapes 2 MP). Its RGB array takes 192 MB and its float32 scores at 19 classes 4.9 GB.
DEFAULT_MAX_PIXELS = 8192 * 8192


def check_max_pixels(max_pixels: int, where: str = "max_pixels") -> int:
    """``max_pixels`` if it is an integer in 1..:data:`PILLOW_MAX_PIXELS`, else a ValueError naming ``where``."""
    if (
        isinstance(max_pixels, bool)
        or not isinstance(max_pixels, int)
        or not 1 <= max_pixels <= PILLOW_MAX_PIXELS
    ):
        raise InvalidInputError(
            f"{where}={max_pixels!r} must be a whole number of pixels from 1 to {PILLOW_MAX_PIXELS} "
            f"(Pillow's decompression-bomb limit); the default is {DEFAULT_MAX_PIXELS}"
        )
    return max_pixels
