"""The object catalogue: 24 categories built from primitives, with named colours (see the package docstring)."""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np

from robust_jax.data.multiview import render
from robust_jax.data.multiview.render import Primitive, rotation_x, rotation_z, rotation_z_to

COLOURS = {
    "red": (0.85, 0.1, 0.1), "green": (0.1, 0.6, 0.15), "blue": (0.12, 0.25, 0.85), "yellow": (0.95, 0.85, 0.1),
    "orange": (1.0, 0.5, 0.05), "purple": (0.5, 0.15, 0.7), "pink": (1.0, 0.55, 0.75), "brown": (0.45, 0.27, 0.1),
    "black": (0.08, 0.08, 0.08), "white": (0.95, 0.95, 0.95), "gray": (0.5, 0.5, 0.52), "cyan": (0.1, 0.8, 0.85),
}
COLOUR_NAMES = tuple(COLOURS)
DARK = (0.07, 0.07, 0.07)
METAL = (0.62, 0.62, 0.66)
WOOD = (0.55, 0.35, 0.16)
CREAM = (0.93, 0.88, 0.75)
GLASS = (0.35, 0.5, 0.65)


# ----------------------------------------------------------------------------------------------- part builders


def _box(centre, half, colour, rotation=None, **style):
    return Primitive("box", tuple(half), tuple(centre), rotation, tuple(colour), **style)


def _frustum(centre, r_bottom, r_top, half_height, colour, axis=None, **style):
    rotation = None if axis is None else rotation_z_to(axis)
    return Primitive("frustum", (r_bottom, r_top, half_height), tuple(centre), rotation, tuple(colour), **style)


def _cylinder(centre, radius, half_height, colour, axis=None, **style):
    return _frustum(centre, radius, radius, half_height, colour, axis, **style)


def _rod(p0, p1, radius, colour, **style):
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    return _cylinder((p0 + p1) / 2, radius, np.linalg.norm(p1 - p0) / 2, colour, axis=p1 - p0, **style)


def _ellipsoid(centre, radii, colour, rotation=None, **style):
    return Primitive("ellipsoid", tuple(radii), tuple(centre), rotation, tuple(colour), **style)


def _sphere(centre, radius, colour, **style):
    return _ellipsoid(centre, (radius, radius, radius), colour, **style)


def _torus(centre, major, minor, colour, axis=(0, 0, 1)):
    return Primitive("torus", (major, minor), tuple(centre), rotation_z_to(axis), tuple(colour))


@dataclasses.dataclass
class _Style:
    rng: np.random.Generator
    main: tuple
    accent: tuple

    def u(self, low, high):
        return float(self.rng.uniform(low, high))

    def texture(self, probability=0.35, scale=1.0):
        """Texture keyword arguments for a main-coloured part: mostly solid, sometimes stripes or a checker."""
        draw = self.rng.uniform()
        if draw >= probability:
            return {}
        kind = "stripes" if draw < probability * 0.6 else "checker"
        second = COLOURS["white"] if self.main != COLOURS["white"] and self.rng.uniform() < 0.5 else self.accent
        return dict(texture=kind, colour2=tuple(second), frequency=self.u(5, 9) / scale)

    def shade(self, factor):
        return tuple(np.clip(np.asarray(self.main) * factor, 0, 1))


# ------------------------------------------------------------------------------------------------- categories


def _mug(s):
    radius, height = s.u(0.32, 0.45), s.u(0.55, 0.8)
    return [
        _frustum((0, 0, height / 2), radius * s.u(0.88, 1.0), radius, height / 2, s.main, cap_colour=DARK,
                 **s.texture(scale=height)),
        _torus((0, radius, height * 0.5), height * s.u(0.22, 0.3), s.u(0.04, 0.06), s.main, axis=(1, 0, 0)),
    ]


def _cup(s):
    radius, height = s.u(0.3, 0.4), s.u(0.35, 0.5)
    return [
        _frustum((0, 0, 0.04 + height / 2), radius * s.u(0.5, 0.65), radius, height / 2, s.main, cap_colour=DARK,
                 **s.texture(scale=height)),
        _cylinder((0, 0, 0.02), radius * s.u(1.4, 1.7), 0.02, s.accent),
    ]


def _bowl(s):
    radius = s.u(0.45, 0.6)
    depth = radius * s.u(0.45, 0.65)
    return [
        _ellipsoid((0, 0, depth + 0.04), (radius, radius, depth), s.main, clip=0.0, cap_colour=s.shade(0.5),
                   **s.texture(scale=depth)),
        _cylinder((0, 0, 0.04), radius * 0.35, 0.04, s.main),
    ]


def _bottle(s):
    radius, body = s.u(0.16, 0.24), s.u(0.45, 0.7)
    neck_radius, shoulder, neck = radius * s.u(0.3, 0.4), s.u(0.12, 0.2), s.u(0.12, 0.2)
    label = _cylinder((0, 0, body * 0.5), radius * 1.02, body * 0.22, s.accent, **s.texture(0.5, body))
    return [
        _cylinder((0, 0, body / 2), radius, body / 2, s.main),
        label,
        _frustum((0, 0, body + shoulder / 2), radius, neck_radius, shoulder / 2, s.main),
        _cylinder((0, 0, body + shoulder + neck / 2), neck_radius, neck / 2, s.main),
        _cylinder((0, 0, body + shoulder + neck + 0.03), neck_radius * 1.2, 0.03, s.accent),
    ]


def _table(s):
    length, width, height = s.u(0.8, 1.1), s.u(0.5, 0.8), s.u(0.5, 0.75)
    leg = s.u(0.025, 0.05)
    parts = [_box((0, 0, height), (length / 2, width / 2, 0.03), s.main, **s.texture(scale=0.5))]
    for sx in (-1, 1):
        for sy in (-1, 1):
            parts.append(_box((sx * (length / 2 - 0.06), sy * (width / 2 - 0.06), height / 2), (leg, leg, height / 2),
                              s.main))
    return parts


def _chair(s):
    seat, height, back = s.u(0.22, 0.28), s.u(0.4, 0.5), s.u(0.4, 0.6)
    leg = 0.025
    parts = [_box((0, 0, height), (seat, seat, 0.035), s.main, **s.texture(scale=0.4)),
             _box((-seat + 0.025, 0, height + back / 2), (0.025, seat, back / 2), s.main)]
    for sx in (-1, 1):
        for sy in (-1, 1):
            parts.append(_box((sx * (seat - 0.03), sy * (seat - 0.03), height / 2), (leg, leg, height / 2), s.main))
    return parts


def _sofa(s):
    depth, width, seat = s.u(0.45, 0.55), s.u(0.9, 1.3), s.u(0.35, 0.42)
    arm = s.u(0.08, 0.13)
    tex = s.texture(scale=0.5)
    parts = [
        _box((0, 0, seat / 2 + 0.04), (depth / 2, width / 2, seat / 2), s.main, **tex),
        _box((-depth / 2 + 0.07, 0, seat + 0.25), (0.07, width / 2, 0.25), s.main, **tex),
    ]
    for sy in (-1, 1):
        parts.append(_box((0, sy * (width / 2 - arm / 2), seat + 0.1), (depth / 2, arm / 2, 0.1), s.main))
        for sx in (-1, 1):
            parts.append(_box((sx * (depth / 2 - 0.04), sy * (width / 2 - 0.04), 0.02), (0.03, 0.03, 0.02), DARK))
    return parts


def _bed(s):
    length, width = s.u(1.0, 1.25), s.u(0.6, 0.85)
    frame = s.shade(0.75)
    return [
        _box((0, 0, 0.2), (length / 2, width / 2, 0.08), frame),
        _box((0.03, 0, 0.32), (length / 2 - 0.03, width / 2 - 0.01, 0.06), s.main, **s.texture(0.3, 0.15)),
        _box((-length / 2, 0, 0.38), (0.03, width / 2, 0.3), frame),
        _box((length / 2, 0, 0.25), (0.03, width / 2, 0.1), frame),
        _ellipsoid((-length / 2 + 0.17, 0, 0.42), (0.11, width * 0.35, 0.05), COLOURS["white"]),
    ]


def _bench(s):
    length, depth, height = s.u(1.0, 1.4), s.u(0.3, 0.4), s.u(0.35, 0.45)
    tex = s.texture(scale=0.3)
    parts = []
    for k in range(3):
        x = (k - 1) * depth / 3
        parts.append(_box((x, 0, height), (depth / 7, length / 2, 0.025), s.main, **tex))
    for sy in (-1, 1):
        parts.append(_box((0, sy * (length / 2 - 0.08), height / 2), (depth / 2 - 0.02, 0.03, height / 2), DARK))
    if s.rng.uniform() < 0.6:  # a backrest of two slats
        for k, z in enumerate((height + 0.2, height + 0.35)):
            parts.append(_box((-depth / 2 + 0.02, 0, z), (0.02, length / 2, 0.05), s.main))
        for sy in (-1, 1):
            parts.append(_box((-depth / 2 + 0.02, sy * (length / 2 - 0.08), height + 0.2), (0.02, 0.03, 0.2), DARK))
    return parts


def _bookshelf(s):
    height, width, depth = s.u(1.2, 1.6), s.u(0.6, 0.9), s.u(0.25, 0.35)
    shelves = int(s.rng.integers(3, 6))
    board = 0.025
    parts = [
        _box((0, -width / 2, height / 2), (depth / 2, board, height / 2), s.main),
        _box((0, width / 2, height / 2), (depth / 2, board, height / 2), s.main),
        _box((-depth / 2, 0, height / 2), (board, width / 2, height / 2), s.shade(0.8)),
    ]
    gap = height / shelves
    for k in range(shelves + 1):
        parts.append(_box((0, 0, k * gap), (depth / 2, width / 2, board), s.main))
    for k in range(shelves):
        y = -width / 2 + 0.05
        while True:
            book_width = s.u(0.03, 0.07)
            if y + book_width > width / 2 - 0.05:
                break
            book_height = gap * s.u(0.5, 0.85)
            colour = COLOURS[COLOUR_NAMES[int(s.rng.integers(len(COLOUR_NAMES)))]]
            parts.append(_box((0, y + book_width / 2, k * gap + board + book_height / 2),
                              (depth * 0.4, book_width / 2, book_height / 2), colour))
            y += book_width + s.u(0.0, 0.04)
    return parts


def _lamp(s):
    pole, shade = s.u(0.55, 0.9), s.u(0.2, 0.3)
    return [
        _frustum((0, 0, 0.03), s.u(0.15, 0.22), 0.12, 0.03, s.accent),
        _cylinder((0, 0, pole / 2), 0.035, pole / 2, DARK),
        _frustum((0, 0, pole + 0.1), shade, shade * s.u(0.5, 0.7), s.u(0.12, 0.16), s.main,
                 **s.texture(scale=0.3)),
    ]


def _car(s):
    length, width = s.u(1.1, 1.3), s.u(0.5, 0.6)
    body = s.u(0.12, 0.16)
    cabin = length * s.u(0.45, 0.6)
    wheel = s.u(0.11, 0.14)
    tex = s.texture(0.25, 0.3)
    parts = [
        _box((0, 0, wheel + body / 2), (length / 2, width / 2, body / 2 + 0.02), s.main, **tex),
        _box((-length * 0.08, 0, wheel + body + 0.1), (cabin / 2, width / 2 - 0.03, 0.1), s.main),
        _box((-length * 0.08 + cabin / 2, 0, wheel + body + 0.1), (0.012, width / 2 - 0.05, 0.08), GLASS),
        _box((-length * 0.08, 0, wheel + body + 0.11), (cabin / 2 - 0.05, width / 2 - 0.02, 0.07), GLASS),
    ]
    for sx in (-1, 1):
        parts.append(_box((length / 2, sx * (width / 2 - 0.08), wheel + body * 0.6), (0.01, 0.05, 0.025),
                          (1.0, 0.95, 0.6)))
        for sy in (-1, 1):
            parts.append(_cylinder((sx * length * 0.32, sy * width / 2, wheel), wheel, 0.05, DARK, axis=(0, 1, 0)))
    return parts


def _airplane(s):
    length, radius, span = s.u(0.9, 1.1), s.u(0.07, 0.1), s.u(0.8, 1.0)
    chord = s.u(0.16, 0.24)
    tex = s.texture(0.3, 0.3)
    return [
        _ellipsoid((0, 0, 0), (length / 2, radius, radius), s.main, **tex),
        _box((0.02, 0, -radius * 0.3), (chord / 2, span / 2, 0.015), s.main),
        _box((-length / 2 + 0.08, 0, radius + 0.1), (0.07, 0.012, 0.11), s.accent),
        _box((-length / 2 + 0.08, 0, 0.02), (0.06, span * 0.18, 0.01), s.main),
        _cylinder((0.06, span * 0.22, -radius * 0.8), 0.04, 0.08, METAL, axis=(1, 0, 0)),
        _cylinder((0.06, -span * 0.22, -radius * 0.8), 0.04, 0.08, METAL, axis=(1, 0, 0)),
        _ellipsoid((length / 2 - 0.1, 0, radius * 0.45), (0.08, radius * 0.7, radius * 0.5), GLASS),
    ]


def _guitar(s):
    lower, upper = s.u(0.26, 0.32), s.u(0.19, 0.24)
    neck = s.u(0.5, 0.65)
    top = 0.3 + lower * 0.8 + upper * 1.6
    return [
        _ellipsoid((0, 0, 0.3), (0.06, lower, lower * 1.1), s.main, **s.texture(0.25, 0.3)),
        _ellipsoid((0, 0, 0.3 + lower * 0.8 + upper * 0.5), (0.06, upper, upper * 1.05), s.main),
        _cylinder((0.055, 0, 0.3 + lower * 0.75), upper * 0.35, 0.01, DARK, axis=(1, 0, 0)),
        _box((0.03, 0, top + neck / 2 - 0.1), (0.025, 0.035, neck / 2), WOOD),
        _box((0.03, 0, top + neck - 0.05), (0.025, 0.055, 0.08), s.accent),
    ]


def _umbrella(s):
    radius, height = s.u(0.5, 0.7), s.u(0.7, 0.95)
    dome = radius * s.u(0.3, 0.45)
    return [
        _ellipsoid((0, 0, height), (radius, radius, dome), s.main, rotation=rotation_x(180.0), clip=0.0,
                   cap_colour=s.shade(0.45), **s.texture(0.5, 0.3)),
        _cylinder((0, 0, (height + dome) / 2 + 0.05), 0.025, (height + dome) / 2 - 0.05, DARK),
        _torus((0, 0.06, 0.1), 0.06, 0.025, DARK, axis=(1, 0, 0)),
        _sphere((0, 0, height + dome + 0.02), 0.025, DARK),
    ]


def _tree(s):
    trunk = s.u(0.25, 0.4)
    parts = [_cylinder((0, 0, trunk / 2), s.u(0.05, 0.08), trunk / 2, WOOD)]
    if s.rng.uniform() < 0.5:  # conifer: stacked cones
        layers, radius = int(s.rng.integers(2, 4)), s.u(0.35, 0.45)
        z = trunk
        for k in range(layers):
            r = radius * (1 - 0.22 * k)
            parts.append(_frustum((0, 0, z + r * 0.7), r, 0.0, r * 0.7, s.main))
            z += r * 0.75
    else:  # broadleaf: a round crown
        radius = s.u(0.35, 0.45)
        parts.append(_ellipsoid((0, 0, trunk + radius * 0.8), (radius, radius, radius * s.u(0.85, 1.1)), s.main))
    return parts


def _rocket(s):
    radius, body = s.u(0.12, 0.17), s.u(0.7, 1.0)
    nose = s.u(0.25, 0.35)
    parts = [
        _cylinder((0, 0, 0.1 + body / 2), radius, body / 2, s.main, **s.texture(0.4, 0.3)),
        _frustum((0, 0, 0.1 + body + nose / 2), radius, 0.0, nose / 2, s.accent),
        _frustum((0, 0, 0.05), radius * 0.5, radius * 0.8, 0.05, DARK),
        _cylinder((radius, 0, 0.1 + body * 0.7), radius * 0.35, 0.01, GLASS, axis=(1, 0, 0)),
    ]
    fins = int(s.rng.integers(3, 5))
    for k in range(fins):
        angle = 360.0 * k / fins + 45.0
        direction = np.array([math.cos(math.radians(angle)), math.sin(math.radians(angle))])
        parts.append(_box(tuple(direction * (radius + 0.07)) + (0.2,), (0.08, 0.012, 0.12), s.accent,
                          rotation=rotation_z(angle)))
    return parts


def _snowman(s):
    radii = [s.u(0.28, 0.33), s.u(0.2, 0.24), s.u(0.14, 0.17)]
    parts, z = [], 0.0
    for k, r in enumerate(radii):
        z += r if k == 0 else r * 0.85
        parts.append(_sphere((0, 0, z), r, s.main))
        head_z = z
        z += r * 0.85
    head = radii[2]
    parts += [
        _frustum((head * 1.1, 0, head_z), 0.03, 0.0, 0.09, COLOURS["orange"], axis=(1, 0, 0)),
        _sphere((head * 0.85, head * 0.35, head_z + head * 0.3), 0.025, DARK),
        _sphere((head * 0.85, -head * 0.35, head_z + head * 0.3), 0.025, DARK),
        _cylinder((0, 0, head_z + head * 0.85), head * 1.3, 0.015, s.accent),
        _cylinder((0, 0, head_z + head * 0.85 + 0.12), head * 0.8, 0.12, s.accent),
    ]
    return parts


def _boat(s):
    length, beam, depth = s.u(0.55, 0.7), s.u(0.18, 0.25), s.u(0.15, 0.22)
    parts = [_ellipsoid((0, 0, depth), (length, beam, depth), s.main, clip=0.0, cap_colour=WOOD,
                        **s.texture(0.3, 0.2))]
    if s.rng.uniform() < 0.5:  # sailing boat
        mast = s.u(0.7, 0.9)
        parts += [_cylinder((0.05, 0, depth + mast / 2), 0.015, mast / 2, WOOD),
                  _box((-0.17, 0, depth + mast * 0.55), (0.2, 0.008, mast * 0.4), COLOURS["white"])]
    else:  # motor boat: a cabin
        parts += [_box((-0.05, 0, depth + 0.08), (length * 0.3, beam * 0.6, 0.08), COLOURS["white"]),
                  _box((-0.05 + length * 0.3, 0, depth + 0.09), (0.01, beam * 0.5, 0.05), GLASS)]
    return parts


def _house(s):
    length, width, wall = s.u(0.45, 0.6), s.u(0.4, 0.55), s.u(0.3, 0.4)
    roof_side = width * 1.15 / math.sqrt(2)
    roof = s.accent if s.accent != s.main else COLOURS["brown"]
    parts = [
        _box((0, 0, wall), (length, width, wall), s.main, **s.texture(0.25, 0.5)),
        _box((0, 0, 2 * wall), (length * 1.08, roof_side, roof_side), roof, rotation=rotation_x(45.0)),
        _box((length, 0, wall * 0.45), (0.01, 0.08, wall * 0.45), DARK),
        _box((length * 0.5, -width, 2 * wall + width * 0.35), (0.06, 0.06, width * 0.4), DARK),
    ]
    for sy in (-1, 1):
        parts.append(_box((length, sy * width * 0.55, wall * 1.1), (0.01, 0.09, 0.09), GLASS))
    return parts


def _bicycle(s):
    wheel = s.u(0.26, 0.32)
    base = s.u(0.42, 0.5)
    rear, front = np.array([0, -base, wheel]), np.array([0, base, wheel])
    crank = np.array([0, -0.02, wheel])
    seat = np.array([0, -base * 0.3, wheel + s.u(0.4, 0.5)])
    head = np.array([0, base * 0.72, seat[2]])
    bar = head + np.array([0, -0.03, 0.1])
    r = 0.018
    return [
        _torus(rear, wheel, 0.025, DARK, axis=(1, 0, 0)),
        _torus(front, wheel, 0.025, DARK, axis=(1, 0, 0)),
        _rod(rear, crank, r, s.main), _rod(rear, seat, r, s.main), _rod(crank, seat, r, s.main),
        _rod(crank, head, r, s.main), _rod(seat, head, r, s.main), _rod(head, front, r, s.main),
        _rod(head, bar, r, METAL),
        _rod(bar + np.array([-0.2, 0, 0]), bar + np.array([0.2, 0, 0]), r, DARK),
        _box(seat + np.array([0, 0, 0.03]), (0.05, 0.09, 0.02), DARK),
    ]


def _dumbbell(s):
    bar, plate = s.u(0.35, 0.5), s.u(0.13, 0.2)
    width = s.u(0.06, 0.12)
    parts = [_cylinder((0, 0, plate), 0.03, bar + width, METAL, axis=(0, 1, 0))]
    for sy in (-1, 1):
        if s.rng.uniform() < 0.5:
            parts.append(_cylinder((0, sy * bar, plate), plate, width, s.main, axis=(0, 1, 0)))
        else:
            parts.append(_sphere((0, sy * bar, plate), plate, s.main))
    return parts


def _mushroom(s):
    stem, cap = s.u(0.3, 0.45), s.u(0.3, 0.42)
    return [
        _frustum((0, 0, stem / 2), s.u(0.09, 0.13), s.u(0.06, 0.09), stem / 2, CREAM),
        _ellipsoid((0, 0, stem), (cap, cap, cap * s.u(0.55, 0.8)), s.main, rotation=rotation_x(180.0), clip=0.0,
                   cap_colour=CREAM, **s.texture(0.4, 0.25)),
    ]


def _traffic_cone(s):
    height, radius = s.u(0.6, 0.8), s.u(0.17, 0.22)
    stripes = dict(texture="stripes", colour2=COLOURS["white"] if s.main != COLOURS["white"] else COLOURS["red"],
                   frequency=s.u(4, 6) / height)
    return [
        _box((0, 0, 0.02), (radius * 1.4, radius * 1.4, 0.02), s.main),
        _frustum((0, 0, 0.04 + height / 2), radius, 0.03, height / 2, s.main,
                 **(stripes if s.rng.uniform() < 0.7 else {})),
    ]


CATEGORIES: dict[str, Callable[[_Style], list[Primitive]]] = {
    "mug": _mug, "cup": _cup, "bowl": _bowl, "bottle": _bottle, "table": _table, "chair": _chair, "sofa": _sofa,
    "bed": _bed, "bench": _bench, "bookshelf": _bookshelf, "lamp": _lamp, "car": _car, "airplane": _airplane,
    "guitar": _guitar, "umbrella": _umbrella, "tree": _tree, "rocket": _rocket, "snowman": _snowman, "boat": _boat,
    "house": _house, "bicycle": _bicycle, "dumbbell": _dumbbell, "mushroom": _mushroom, "traffic cone": _traffic_cone,
}


def category_names() -> tuple[str, ...]:
    return tuple(CATEGORIES)


def make_object(category: int | str, seed: int, index: int) -> tuple[list[Primitive], int]:
    """(parts scaled into the unit sphere, colour index) of instance `index` of `category`."""
    names = category_names()
    category_index = names.index(category) if isinstance(category, str) else int(category)
    rng = np.random.default_rng([seed, category_index, index, 0])
    colour_index = int(rng.integers(len(COLOUR_NAMES)))
    main = tuple(np.clip(np.asarray(COLOURS[COLOUR_NAMES[colour_index]]) + rng.uniform(-0.05, 0.05, 3), 0, 1))
    accent_choices = [i for i in range(len(COLOUR_NAMES)) if i != colour_index]
    accent = COLOURS[COLOUR_NAMES[accent_choices[int(rng.integers(len(accent_choices)))]]]
    parts = CATEGORIES[names[category_index]](_Style(rng, main, accent))
    return render.normalise_object(parts), colour_index


