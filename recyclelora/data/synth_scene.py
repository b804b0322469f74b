"""Street-scene layouts of the embedded benchmark: a pinhole camera over a flat world, as trainId polygons.

World frame: x to the right, y up (metres above the ground), z forward (depth). A point projects to
``u = c + f x / z`` and ``v = v_h + f (h - y) / z`` (focal ``f`` in pixels, camera height ``h``, horizon row
``v_h``), so every ground line ``x = const`` runs into the vanishing point ``(c, v_h)`` and an object at depth
``z`` spans ``f / z`` pixels per metre. Scenes are painted far to near (painter's algorithm) with PIL polygons
on a label image and an instance image; no per-pixel Python loops.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from recyclelora.data.classes import CLASS_NAMES

(ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, TRAFFIC_LIGHT, TRAFFIC_SIGN, VEGETATION, TERRAIN, SKY, PERSON,
 RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE) = range(len(CLASS_NAMES))  # fmt: skip

#: How the depth of an instance's pixels is found: one value, the ground plane, or a plane ``x = const``.
DEPTH_CONSTANT, DEPTH_GROUND, DEPTH_SIDE = 0, 1, 2
MAX_DEPTH = 1000.0


@dataclass(frozen=True)
class Camera:
    """Pinhole camera at height ``elevation`` (m) looking along +z; see the module docstring for the model."""

    width: int
    height: int
    focal: float
    horizon: float
    centre: float
    elevation: float

    def project(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) world points with z > 0 -> (N, 2) pixel coordinates (u, v)."""
        x, y, z = points[:, 0], points[:, 1], points[:, 2]
        return np.stack(
            [self.centre + self.focal * x / z, self.horizon + self.focal * (self.elevation - y) / z], 1
        )


@dataclass(frozen=True)
class Scene:
    """A drawn scene: trainId ``label`` and ``instance`` ids (H, W), instance attributes, ``depth`` (m)."""

    camera: Camera
    label: np.ndarray
    instance: np.ndarray
    instance_class: np.ndarray
    instance_shade: np.ndarray
    instance_light: np.ndarray
    depth: np.ndarray


class Canvas:
    """Paints world-space polygons into a label and an instance image; every part is one instance."""

    def __init__(self, camera: Camera) -> None:
        self.camera = camera
        size = (camera.width, camera.height)
        self._label = Image.new("L", size, SKY)
        self._instance = Image.new("I", size, 0)
        self._draws = (ImageDraw.Draw(self._label), ImageDraw.Draw(self._instance))
        # (class, depth mode, depth value, shade, light); instance 0 is the sky behind everything.
        self._records: list[tuple[int, int, float, float, bool]] = [(SKY, DEPTH_CONSTANT, np.inf, 1.0, False)]

    def part(
        self, klass: int, depth: float, *, mode: int = DEPTH_CONSTANT, shade: float = 1.0, light: bool = False
    ) -> int:
        """Register an instance; ``shade`` scales its colour (dark tyres, windows), ``light`` marks a lamp."""
        self._records.append((klass, mode, depth, shade, light))
        return len(self._records) - 1

    def polygon(self, part: int, points: np.ndarray) -> None:
        """Fill the projection of a planar world polygon (N, 3)."""
        xy = self.camera.project(np.asarray(points, dtype=np.float64)).ravel().tolist()
        klass = self._records[part][0]
        self._draws[0].polygon(xy, fill=klass)
        self._draws[1].polygon(xy, fill=part)

    def line(self, part: int, points: np.ndarray, width: float) -> None:
        """Draw a world polyline (N, 3) ``width`` metres thick (at least one pixel)."""
        points = np.asarray(points, dtype=np.float64)
        pixels = max(1, round(width * self.camera.focal / float(points[:, 2].mean())))
        xy = self.camera.project(points).ravel().tolist()
        klass = self._records[part][0]
        self._draws[0].line(xy, fill=klass, width=pixels)
        self._draws[1].line(xy, fill=part, width=pixels)

    def finish(self) -> Scene:
        """Freeze the drawing into a :class:`Scene` and compute each pixel's depth from its instance."""
        label = np.array(self._label, dtype=np.uint8)
        instance = np.array(self._instance, dtype=np.int32)
        klass, mode, value, shade, light = (np.array(column) for column in zip(*self._records, strict=True))
        cam = self.camera
        rows = np.arange(cam.height, dtype=np.float64)[:, None] - cam.horizon
        cols = np.arange(cam.width, dtype=np.float64)[None, :] - cam.centre
        with np.errstate(divide="ignore", invalid="ignore"):
            ground = np.where(rows > 0, cam.focal * cam.elevation / rows, MAX_DEPTH)
            side = cam.focal * value[instance] / cols
        pixel_mode = mode[instance]
        depth = np.where(
            pixel_mode == DEPTH_GROUND, ground, np.where(pixel_mode == DEPTH_SIDE, side, value[instance])
        )
        depth = np.where(np.isfinite(depth) & (depth > 0), depth, MAX_DEPTH)
        return Scene(
            camera=cam,
            label=label,
            instance=instance,
            instance_class=klass.astype(np.uint8),
            instance_shade=shade.astype(np.float32),
            instance_light=light.astype(bool),
            depth=np.clip(depth, 1.0, MAX_DEPTH).astype(np.float32),
        )


@dataclass(frozen=True)
class Side:
    """Cross-section of one side of the street: |x| of the kerb, sidewalk end, verge end and facade."""

    sign: int
    kerb: float
    sidewalk: float
    verge: float
    facade: float


def _quad_x(x: float, z0: float, z1: float, y0: float, y1: float) -> np.ndarray:
    """Rectangle in the plane ``x = const``."""
    return np.array([[x, y0, z0], [x, y0, z1], [x, y1, z1], [x, y1, z0]])


def _quad_z(z: float, x0: float, x1: float, y0: float, y1: float) -> np.ndarray:
    """Rectangle in the plane ``z = const``."""
    return np.array([[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]])


def _ground(x0: float, x1: float, z0: float, z1: float) -> np.ndarray:
    return np.array([[x0, 0.0, z0], [x1, 0.0, z0], [x1, 0.0, z1], [x0, 0.0, z1]])


def _in_plane(z: float, xy: list[tuple[float, float]]) -> np.ndarray:
    """Polygon of (x, y) vertices in the plane ``z = const``."""
    return np.array([(x, y, z) for x, y in xy])


def _disc(centre: tuple[float, float, float], radius: float, radius_y: float | None = None) -> np.ndarray:
    """Ellipse (16 vertices) in the plane ``z = centre z``."""
    angle = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    x, y, z = centre
    ry = radius if radius_y is None else radius_y
    return np.stack([x + radius * np.cos(angle), y + ry * np.sin(angle), np.full(16, z)], 1)


def _camera(rng: np.random.Generator, width: int, height: int) -> Camera:
    return Camera(
        width=width,
        height=height,
        focal=width * rng.uniform(0.75, 1.05),
        horizon=height * rng.uniform(0.38, 0.5),
        centre=width * rng.uniform(0.42, 0.58),
        elevation=rng.uniform(1.3, 1.8),
    )


def _sides(rng: np.random.Generator) -> tuple[Side, Side]:
    sides = []
    for sign in (-1, 1):
        kerb = rng.uniform(2.0, 8.5)
        sidewalk = kerb + rng.uniform(2.0, 5.0)
        verge = sidewalk + (rng.uniform(1.0, 4.0) if rng.random() < 0.35 else 0.0)
        sides.append(Side(sign, kerb, sidewalk, verge, verge + rng.uniform(0.0, 2.0)))
    return sides[0], sides[1]


def _draw_ground(canvas: Canvas, sides: tuple[Side, Side]) -> None:
    """Terrain everywhere, then verges, sidewalks and the road as strips running to the horizon."""
    far = MAX_DEPTH
    canvas.polygon(canvas.part(TERRAIN, 0.0, mode=DEPTH_GROUND), _ground(-300, 300, 1.0, far))
    for side in sides:
        s = side.sign
        if side.verge > side.sidewalk:
            canvas.polygon(
                canvas.part(TERRAIN, 0.0, mode=DEPTH_GROUND),
                _ground(s * side.sidewalk, s * side.verge, 1.0, far),
            )
        canvas.polygon(
            canvas.part(SIDEWALK, 0.0, mode=DEPTH_GROUND), _ground(s * side.kerb, s * side.sidewalk, 1.0, far)
        )
    left, right = sides
    canvas.polygon(canvas.part(ROAD, 0.0, mode=DEPTH_GROUND), _ground(-left.kerb, right.kerb, 1.0, far))


def _draw_skyline(canvas: Canvas, rng: np.random.Generator) -> None:
    """A row of buildings (or a tree line) across the far end of the street, or open sky."""
    if rng.random() < 0.2:
        return
    z = rng.uniform(90.0, 260.0)
    x = -120.0
    while x < 120.0:
        width = rng.uniform(8.0, 30.0)
        klass = VEGETATION if rng.random() < 0.2 else BUILDING
        top = rng.uniform(5.0, 35.0) if klass == BUILDING else rng.uniform(5.0, 12.0)
        canvas.polygon(canvas.part(klass, z), _quad_z(z, x, x + width, 0.0, top))
        x += width


def _draw_facades(canvas: Canvas, rng: np.random.Generator, side: Side) -> None:
    """Buildings, parks and gaps along one side (rectangles in planes ``x = const``); walls and fences."""
    z = rng.uniform(2.0, 14.0)
    end = rng.uniform(60.0, 220.0)
    segments: list[tuple[float, float, float, int, float]] = []
    while z < end:
        length = rng.uniform(8.0, 35.0)
        kind = rng.choice(3, p=[0.75, 0.1, 0.15])
        x = side.sign * (side.facade + rng.uniform(0.0, 1.5))
        if kind == 0:
            segments.append((z, z + length, x, BUILDING, rng.uniform(6.0, 30.0)))
        elif kind == 2:
            segments.append((z, z + length, x, VEGETATION, rng.uniform(3.0, 12.0)))
        z += length
    for z0, z1, x, klass, top in reversed(segments):
        canvas.polygon(canvas.part(klass, x, mode=DEPTH_SIDE), _quad_x(x, z0, z1, 0.0, top))
    if rng.random() < 0.45:
        z0 = rng.uniform(2.0, 30.0)
        z1 = z0 + rng.uniform(10.0, 60.0)
        x = side.sign * max(side.sidewalk, side.facade - rng.uniform(0.3, 1.0))
        klass = WALL if rng.random() < 0.5 else FENCE
        canvas.polygon(canvas.part(klass, x, mode=DEPTH_SIDE), _quad_x(x, z0, z1, 0.0, rng.uniform(0.8, 2.6)))


Painter = Callable[[Canvas], None]


def _tree(rng: np.random.Generator, x: float, z: float) -> Painter:
    """A trunk and an elliptic crown (both vegetation, as Cityscapes labels trees)."""
    trunk, radius = rng.uniform(1.8, 3.5), rng.uniform(1.2, 3.0)
    stretch = rng.uniform(0.9, 1.4)

    def paint(canvas: Canvas) -> None:
        canvas.polygon(
            canvas.part(VEGETATION, z, shade=0.55), _quad_z(z, x - 0.15, x + 0.15, 0.0, trunk + radius)
        )
        canvas.polygon(
            canvas.part(VEGETATION, z),
            _disc((x, trunk + radius * stretch * 0.8, z), radius, radius * stretch),
        )

    return paint


def _pole(rng: np.random.Generator, side: Side, x: float, z: float) -> Painter:
    """A pole, sometimes with a traffic light (on an arm over the road or mounted low) and a sign."""
    height, width = rng.uniform(4.0, 9.0), rng.uniform(0.12, 0.3)
    light = rng.random() < 0.35
    arm = rng.uniform(1.5, 4.5) if rng.random() < 0.5 else 0.0
    sign_shape = int(rng.integers(3)) if rng.random() < 0.45 else -1
    sign_height, sign_size = rng.uniform(2.0, 3.2), rng.uniform(0.5, 0.9)
    lamp = int(rng.integers(3))
    top = height - 0.3 if arm else min(height, rng.uniform(2.8, 4.0))

    def paint(canvas: Canvas) -> None:
        pole = canvas.part(POLE, z)
        canvas.polygon(pole, _quad_z(z, x - width / 2, x + width / 2, 0.0, height))
        if light:
            hang = x - side.sign * arm
            if arm:
                canvas.line(pole, np.array([[x, height - 0.3, z], [hang, height - 0.3, z]]), 0.12)
            box = canvas.part(TRAFFIC_LIGHT, z, shade=0.35)
            canvas.polygon(box, _quad_z(z, hang - 0.2, hang + 0.2, top - 1.0, top))
            lamp_y = top - 0.2 - 0.3 * lamp
            canvas.polygon(canvas.part(TRAFFIC_LIGHT, z, light=True), _disc((hang, lamp_y, z), 0.11))
        if sign_shape >= 0:
            sx = x - side.sign * (width / 2 + sign_size / 2)
            part = canvas.part(TRAFFIC_SIGN, z)
            if sign_shape == 0:
                canvas.polygon(part, _disc((sx, sign_height, z), sign_size / 2))
            elif sign_shape == 1:
                r = sign_size / 2
                triangle = [(sx - r, sign_height - r), (sx + r, sign_height - r), (sx, sign_height + r)]
                canvas.polygon(part, _in_plane(z, triangle))
            else:
                half = sign_size / 2
                canvas.polygon(part, _quad_z(z, sx - half, sx + half, sign_height - 0.35, sign_height + 0.35))

    return paint


#: Vehicle kinds: class, width, height, length (metres), and the share among moving vehicles.
VEHICLES = {
    CAR: (1.8, 1.5, 4.5, 0.7),
    TRUCK: (2.5, 3.3, 8.0, 0.11),
    BUS: (2.55, 3.2, 12.0, 0.11),
    TRAIN: (2.65, 3.6, 25.0, 0.08),
}


def _vehicle(rng: np.random.Generator, klass: int, x: float, z: float) -> Painter:
    """A box-shaped vehicle seen from behind: rear and visible side faces, window, tyres, lamps."""
    width, height, length, _ = VEHICLES[klass]
    width *= rng.uniform(0.92, 1.08)
    height *= rng.uniform(0.9, 1.1)
    length *= rng.uniform(0.9, 1.1)
    x0, x1 = x - width / 2, x + width / 2
    depth = z + length / 2

    def faces(
        canvas: Canvas, part: int, xa: float, xb: float, za: float, zb: float, ya: float, yb: float
    ) -> None:
        """The visible side face (towards the camera axis) and the rear face of a box."""
        if xa > 0:
            canvas.polygon(part, _quad_x(xa, za, zb, ya, yb))
        elif xb < 0:
            canvas.polygon(part, _quad_x(xb, za, zb, ya, yb))
        canvas.polygon(part, _quad_z(za, xa, xb, ya, yb))

    def paint(canvas: Canvas) -> None:
        body = canvas.part(klass, depth)
        if klass == CAR:
            faces(canvas, body, x0, x1, z, z + length, 0.3, 0.6 * height)
            cabin_z = z + 0.25 * length
            faces(
                canvas,
                body,
                x0 + 0.12 * width,
                x1 - 0.12 * width,
                cabin_z,
                z + 0.8 * length,
                0.6 * height,
                height,
            )
            window = (x0 + 0.2 * width, x1 - 0.2 * width, 0.65 * height, 0.93 * height)
        else:
            faces(canvas, body, x0, x1, z, z + length, 0.35, height)
            cabin_z = z
            window = (x0 + 0.15, x1 - 0.15, (0.8 if klass == TRUCK else 0.55) * height, 0.92 * height)
        canvas.polygon(canvas.part(klass, depth, shade=0.4), _quad_z(cabin_z - 0.01, *window))
        tyre = canvas.part(klass, depth, shade=0.2)
        side_x = x0 if x0 > 0 else x1 if x1 < 0 else None
        if side_x is not None:
            for wz in (z + 0.15 * length, z + 0.85 * length):
                canvas.polygon(tyre, _quad_x(side_x, wz - 0.35, wz + 0.35, 0.0, 0.65))
        for tx in (x0 + 0.1, x1 - 0.35):
            canvas.polygon(tyre, _quad_z(z + 0.01, tx, tx + 0.25, 0.0, 0.35))
        for lx in (x0 + 0.12, x1 - 0.32):
            lamp = canvas.part(klass, depth, light=True)
            canvas.polygon(lamp, _quad_z(z - 0.02, lx, lx + 0.2, 0.45 * height, 0.52 * height))

    return paint


def _person_parts(
    canvas: Canvas, klass: int, x: float, z: float, hip: float, height: float, heading: int = 0
) -> None:
    """Head, torso and legs in the plane ``z = const``: standing (``heading`` 0) or seated facing +-x."""
    torso, legs, head = (
        canvas.part(klass, z),
        canvas.part(klass, z, shade=0.7),
        canvas.part(klass, z, shade=1.25),
    )
    shoulder = hip + 0.32 * height
    canvas.polygon(
        torso, _in_plane(z, [(x - 0.17, hip), (x + 0.17, hip), (x + 0.22, shoulder), (x - 0.22, shoulder)])
    )
    canvas.polygon(head, _disc((x, shoulder + 0.12 * height / 1.75, z), 0.1, 0.12))
    if heading:
        knee, foot = (x + 0.35 * heading, hip - 0.1), (x + 0.3 * heading, hip - 0.5)
        canvas.line(legs, _in_plane(z, [(x, hip), knee, foot]), 0.14)
    else:
        canvas.polygon(
            legs, _in_plane(z, [(x - 0.17, hip), (x + 0.17, hip), (x + 0.13, 0.0), (x - 0.13, 0.0)])
        )


def _person(rng: np.random.Generator, x: float, z: float) -> Painter:
    height = rng.uniform(1.5, 1.95)
    return lambda canvas: _person_parts(canvas, PERSON, x, z, 0.5 * height, height)


def _cycle(rng: np.random.Generator, x: float, z: float, ridden: bool) -> Painter:
    """A bicycle or motorcycle seen in profile, with a rider when ``ridden``."""
    klass = MOTORCYCLE if rng.random() < 0.5 else BICYCLE
    heading = 1 if rng.random() < 0.5 else -1
    height = rng.uniform(1.55, 1.9)

    def paint(canvas: Canvas) -> None:
        frame = canvas.part(klass, z, shade=0.6)
        if klass == BICYCLE:
            radius, half = 0.34, 0.52
            for wx in (x - half, x + half):
                canvas.line(
                    frame, np.vstack([_disc((wx, radius, z), radius), [[wx + radius, radius, z]]]), 0.05
                )
            rear, front = (x - half * heading, radius), (x + half * heading, radius)
            saddle, bars = (x - 0.1 * heading, 0.95), (x + 0.35 * heading, 0.95)
            canvas.line(frame, _in_plane(z, [rear, saddle, bars, front, (x, 0.3), rear]), 0.05)
            seat = 0.95
        else:
            radius, half = 0.3, 0.7
            for wx in (x - half, x + half):
                canvas.polygon(canvas.part(klass, z, shade=0.25), _disc((wx, radius, z), radius))
            body = [(x - 0.6 * heading, 0.45), (x + 0.6 * heading, 0.4), (x + 0.45 * heading, 1.05)]
            canvas.polygon(frame, _in_plane(z, [*body, (x - 0.3 * heading, 0.85)]))
            seat = 0.85
        if ridden:
            _person_parts(canvas, RIDER, x - 0.1 * heading, z, seat, height, heading=heading)

    return paint


def _objects(rng: np.random.Generator, sides: tuple[Side, Side]) -> list[tuple[float, Painter]]:
    """Everything standing on the street, as (depth, painter) pairs."""
    left, right = sides
    items: list[tuple[float, Painter]] = []
    for side in sides:
        if rng.random() < 0.55:
            z = rng.uniform(5.0, 15.0)
            while z < 90.0:
                x = side.sign * (side.kerb + rng.uniform(0.6, 1.2))
                items.append((z, _tree(rng, x, z)))
                z += rng.uniform(8.0, 18.0)
        if rng.random() < 0.85:
            z = rng.uniform(4.0, 15.0)
            while z < 110.0:
                items.append((z, _pole(rng, side, side.sign * (side.kerb + rng.uniform(0.3, 0.6)), z)))
                z += rng.uniform(12.0, 35.0)
        for _ in range(rng.poisson(2.5)):
            x = side.sign * rng.uniform(side.kerb + 0.4, side.sidewalk - 0.3)
            items.append((z := rng.uniform(4.0, 45.0), _person(rng, x, z)))
        for _ in range(rng.poisson(0.4)):
            x = side.sign * rng.uniform(side.kerb + 0.5, side.sidewalk - 0.5)
            items.append((z := rng.uniform(4.0, 35.0), _cycle(rng, x, z, ridden=False)))
        for _ in range(rng.poisson(1.2)):
            klass = CAR if rng.random() < 0.9 else TRUCK
            x = side.sign * (side.kerb - VEHICLES[klass][0] / 2 - 0.2)
            items.append((z := rng.uniform(5.0, 60.0), _vehicle(rng, klass, x, z)))
    kinds = list(VEHICLES)
    share = np.array([VEHICLES[k][3] for k in kinds])
    for _ in range(rng.poisson(2.5)):
        klass = kinds[rng.choice(len(kinds), p=share / share.sum())]
        x = rng.uniform(-left.kerb + 1.4, right.kerb - 1.4)
        z = rng.uniform(10.0 if abs(x) < 2.0 else 6.0, 90.0)
        items.append((z, _vehicle(rng, klass, x, z)))
    for _ in range(rng.poisson(1.0)):
        x = rng.uniform(-left.kerb + 0.8, right.kerb - 0.8)
        z = rng.uniform(8.0 if abs(x) < 2.0 else 5.0, 45.0)
        items.append((z, _cycle(rng, x, z, ridden=True)))
    for _ in range(rng.poisson(0.4)):
        x = rng.uniform(-left.kerb, right.kerb)
        items.append((z := rng.uniform(9.0, 40.0), _person(rng, x, z)))
    return items


def draw_scene(rng: np.random.Generator, width: int, height: int) -> Scene:
    """Draw one random street scene of ``width`` x ``height`` pixels from ``rng``."""
    canvas = Canvas(_camera(rng, width, height))
    sides = _sides(rng)
    _draw_skyline(canvas, rng)
    _draw_ground(canvas, sides)
    for side in sides:
        _draw_facades(canvas, rng, side)
    items = _objects(rng, sides)
    for _, paint in sorted(items, key=lambda item: -item[0]):
        paint(canvas)
    return canvas.finish()
