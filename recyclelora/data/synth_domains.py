"""Appearance of the embedded benchmark's domains: one renderer per domain turns a drawn scene into RGB.

Every renderer starts from flat per-instance colours (a class palette plus per-instance jitter, scaled by the
instance's shade) and a sky gradient, then applies its domain's corruption:

- ``synth_src``: the source domain, flat game-like shading and nothing else;
- ``synth_tex``: multi-octave texture per class, facade windows, white-balance and gamma change, blur,
  sensor noise;
- ``synth_night``: colours x ~0.2 with a colour cast, dark sky, lit lamps and windows with glow, noise;
- ``synth_fog``: haze ``I = J t + A (1 - t)`` with ``t = exp(-beta depth)``, desaturation, rain streaks;
- ``synth_palette``: another palette per class and another sky (same flat shading).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from recyclelora.data.classes import NUM_CLASSES
from recyclelora.data.synth_config import SOURCE_DOMAIN, TARGET_DOMAINS
from recyclelora.data.synth_scene import BUILDING, CAR, ROAD, TERRAIN, VEGETATION, Scene

#: Base colour per trainId (RGB) of the source domain.
SOURCE_PALETTE = np.array(
    [
        (92, 92, 98), (168, 160, 152), (150, 128, 108), (176, 168, 148), (128, 108, 86), (118, 118, 122),
        (52, 52, 48), (40, 92, 200), (72, 124, 52), (134, 164, 82), (150, 190, 235), (96, 80, 92),
        (122, 62, 64), (120, 120, 132), (150, 150, 140), (205, 172, 52), (182, 182, 194), (62, 62, 72),
        (52, 62, 84),
    ],
    dtype=np.float32,
)  # fmt: skip
#: Per-class standard deviation of the per-instance colour jitter.
JITTER = np.array(
    [6, 8, 28, 12, 14, 10, 6, 40, 12, 12, 0, 45, 45, 60, 30, 30, 20, 30, 30], dtype=np.float32
)  # fmt: skip
#: The palette domain's colours: every class moved to another hue.
ALT_PALETTE = np.array(
    [
        (138, 86, 64), (88, 112, 156), (74, 104, 82), (150, 96, 140), (196, 190, 90), (216, 150, 60),
        (160, 200, 220), (220, 60, 160), (186, 104, 40), (214, 196, 120), (236, 178, 142), (60, 150, 150),
        (160, 200, 90), (200, 80, 60), (90, 160, 90), (110, 70, 170), (60, 60, 140), (200, 200, 60),
        (230, 120, 200),
    ],
    dtype=np.float32,
)  # fmt: skip
LAMP_COLOURS = np.array([(255, 40, 30), (255, 190, 40), (60, 255, 120)], dtype=np.float32)

Renderer = Callable[[Scene, np.random.Generator], np.ndarray]


def _flat(
    scene: Scene, rng: np.random.Generator, palette: np.ndarray, sky: tuple[tuple[int, int, int], ...]
) -> np.ndarray:
    """Flat colour per instance, (H, W, 3) float32 in 0..255: palette + N(0, jitter) per instance, x shade.

    Lamps (traffic lights, vehicle lights) take a lamp colour (red for vehicles); the sky (instance 0) is a
    vertical gradient from ``sky[0]`` at the top to ``sky[1]`` at the horizon.
    """
    klass = scene.instance_class
    count = len(klass)
    colours = palette[klass] + rng.standard_normal((count, 3)).astype(np.float32) * JITTER[klass][:, None]
    colours *= scene.instance_shade[:, None] * rng.uniform(0.85, 1.15, (count, 1)).astype(np.float32)
    lamp = LAMP_COLOURS[rng.integers(0, len(LAMP_COLOURS), count)]
    lamp[klass == CAR] = LAMP_COLOURS[0]
    colours = np.where(scene.instance_light[:, None], lamp, colours)
    image = np.clip(colours, 0, 255)[scene.instance]
    rows = np.clip(np.arange(scene.camera.height, dtype=np.float32) / scene.camera.horizon, 0, 1)[
        :, None, None
    ]
    gradient = np.asarray(sky[0], np.float32) * (1 - rows) + np.asarray(sky[1], np.float32) * rows
    return np.where((scene.instance == 0)[..., None], gradient, image)


def _noise(rng: np.random.Generator, shape: tuple[int, int], cell: float) -> np.ndarray:
    """Smooth value noise (H, W) with unit-ish variance: Gaussian lattice every ``cell`` px, bilinear."""
    height, width = shape
    lattice = rng.standard_normal((int(height / cell) + 2, int(width / cell) + 2)).astype(np.float32)
    return np.asarray(Image.fromarray(lattice, mode="F").resize((width, height), Image.Resampling.BILINEAR))


def _fractal(rng: np.random.Generator, shape: tuple[int, int], cells: tuple[float, ...]) -> np.ndarray:
    """Sum of value-noise octaves with amplitude halving per octave."""
    return sum(0.5**i * _noise(rng, shape, cell) for i, cell in enumerate(cells))


def _blur(image: np.ndarray, radius: float) -> np.ndarray:
    """Gaussian blur of a float (H, W, 3) image in 0..255 (through 8-bit PIL)."""
    pil = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    return np.asarray(pil.filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def render_source(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Source domain: flat per-instance colours and a clean blue sky."""
    return _to_uint8(_flat(scene, rng, SOURCE_PALETTE, ((110, 160, 230), (200, 220, 240))))


def render_texture(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Textured domain: per-class noise textures, windows, white balance + gamma, blur and sensor noise."""
    image = _flat(scene, rng, SOURCE_PALETTE, ((90, 130, 190), (215, 215, 205)))
    shape = scene.label.shape
    width = scene.camera.width
    amplitude = np.full(NUM_CLASSES, 0.15, np.float32)
    amplitude[[VEGETATION, TERRAIN]] = 0.4
    amplitude[[ROAD, BUILDING]] = 0.25
    texture = _fractal(rng, shape, (width / 16, width / 48, 2.0))
    image *= 1 + amplitude[scene.label][..., None] * texture[..., None]
    period = max(3, width // 96)
    rows, cols = np.indices(shape)
    windows = (scene.label == BUILDING) & ((rows // period) % 3 > 0) & ((cols // period) % 3 > 0)
    image[windows] *= np.array([0.55, 0.6, 0.75], np.float32)
    image *= rng.uniform(0.8, 1.2, 3).astype(np.float32)
    image = 255 * (np.clip(image, 0, 255) / 255) ** rng.uniform(0.75, 1.3)
    image = _blur(image, rng.uniform(0.6, 1.4) * width / 512)
    image += rng.normal(0, rng.uniform(8, 16), image.shape).astype(np.float32)
    return _to_uint8(image)


def render_night(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Night domain: dim, colour-cast, low-contrast scene; lamps and lit windows glow."""
    image = _flat(scene, rng, SOURCE_PALETTE, ((4, 6, 18), (28, 26, 44)))
    lamps = scene.instance_light[scene.instance]
    cast = np.array([(0.8, 0.9, 1.35), (1.3, 1.0, 0.6)][int(rng.integers(2))], np.float32)
    dim = np.where((lamps | (scene.instance == 0))[..., None], 1.0, rng.uniform(0.15, 0.28) * cast)
    image *= dim
    lit = (scene.label == BUILDING) & (_noise(rng, scene.label.shape, scene.camera.width / 128) > 1.6)
    image[lit] = np.array([230, 180, 110], np.float32)
    emission = np.where((lamps | lit)[..., None], image, 0)
    image += 1.8 * _blur(emission, scene.camera.width / 80)
    image = 20 + 0.85 * image
    image += rng.normal(0, rng.uniform(3, 7), image.shape).astype(np.float32)
    return _to_uint8(image)


def render_fog(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Fog/rain domain: depth haze, half the saturation, rain streaks, slight blur."""
    image = _flat(scene, rng, SOURCE_PALETTE, ((170, 175, 185), (200, 200, 205)))
    transmission = np.exp(-rng.uniform(0.02, 0.06) * scene.depth)[..., None]
    airlight = rng.uniform(180, 225) * np.array([0.97, 0.99, 1.02], np.float32)
    image = image * transmission + airlight * (1 - transmission)
    grey = image.mean(axis=2, keepdims=True)
    image = grey + rng.uniform(0.3, 0.6) * (image - grey)
    height, width = scene.label.shape
    streaks = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(streaks)
    count = int(rng.uniform(150, 400) * width * height / (512 * 256))
    slant = rng.uniform(-0.3, 0.3)
    starts = rng.uniform(0, 1, (count, 2)) * (width, height)
    lengths = rng.uniform(0.04, 0.1, count) * height
    for (x, y), length in zip(starts.tolist(), lengths.tolist(), strict=True):
        draw.line((x, y, x + slant * length, y + length), fill=255, width=1)
    alpha = 0.3 * np.asarray(streaks, np.float32)[..., None] / 255
    image = image * (1 - alpha) + 235 * alpha
    return _to_uint8(_blur(image, 0.5 * width / 512))


def render_palette(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Palette domain: the source's flat shading with another colour per class and a sunset sky."""
    return _to_uint8(_flat(scene, rng, ALT_PALETTE, ((120, 90, 160), (250, 180, 120))))


DOMAINS: dict[str, Renderer] = {
    SOURCE_DOMAIN: render_source,
    "synth_tex": render_texture,
    "synth_night": render_night,
    "synth_fog": render_fog,
    "synth_palette": render_palette,
}
if tuple(DOMAINS) != (SOURCE_DOMAIN, *TARGET_DOMAINS):  # the names are also in synth_config, for the CLI
    raise RuntimeError(f"synth_config names {(SOURCE_DOMAIN, *TARGET_DOMAINS)}, the renderers {tuple(DOMAINS)}")
