"""A small numpy ray caster for objects built from primitives: boxes, (clipped) ellipsoids, cone frustums, tori.

Analytic ray-primitive intersection, vectorised over all rays of a batch of views of one object (the per-op numpy
overhead is paid once per primitive per batch, not per image). Tori have a quartic intersection, so they are sphere
traced on their signed distance instead (only the rays that enter the torus' bounding sphere).

Conventions. World frame: z up; objects face +x (azimuth 0 looks at the front) and fit in the unit sphere. A camera
at azimuth phi, elevation theta (degrees) and distance d sits at d (cos theta cos phi, cos theta sin phi, sin theta)
and looks at the origin; its right vector is (-sin phi, cos phi, 0) and its up vector
(-sin theta cos phi, -sin theta sin phi, cos theta), both smooth over the whole sphere (no gimbal flip at the poles);
roll turns right/up about the viewing axis (positive roll turns the camera clockwise, so the picture turns
counterclockwise: at roll 90 the object's top points to the image's left). Pixel (i, j) has its ray
through the pixel centre; image rows run from the top (up) down.

Shading: Lambertian, albedo * (AMBIENT + DIFFUSE * max(0, n . l)) with the light direction fixed in the camera frame
(`DEFAULT_LIGHT`: from the upper left, behind the camera), so every view is lit the way a photographer would light it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

AMBIENT = 0.3
DIFFUSE = 0.7
DEFAULT_FOV_DEGREES = 46.0
DEFAULT_LIGHT = (-0.45, 0.6, 0.66)  # camera frame (right, up, towards the viewer)
KINDS = ("box", "ellipsoid", "frustum", "torus")
TEXTURES = ("solid", "stripes", "checker")
_EPS = 1e-6


@dataclasses.dataclass(frozen=True)
class Primitive:
    """One solid part of an object, in its local frame (mapped to world by `rotation @ p + centre`).

    size: box (hx, hy, hz) half extents; ellipsoid (rx, ry, rz) radii; frustum (r_bottom, r_top, half_height)
    along local z (a cylinder when r_bottom == r_top, a cone when r_top == 0); torus (major, minor) in the local
    xy-plane. clip (ellipsoid only): keep local z <= clip * rz (0: the lower half, a bowl; 1: the whole ellipsoid),
    the cut closed by a flat cap. Textures are computed in local coordinates: 'stripes' alternate colour and colour2
    along local z, 'checker' in 3-D cells, both with `frequency` cells per unit length.
    """

    kind: str
    size: tuple
    centre: tuple = (0.0, 0.0, 0.0)
    rotation: np.ndarray | None = None
    colour: tuple = (0.5, 0.5, 0.5)
    texture: str = "solid"
    colour2: tuple = (1.0, 1.0, 1.0)
    frequency: float = 4.0
    clip: float = 1.0
    cap_colour: tuple | None = None  # ellipsoid cut / frustum top cap drawn in this colour (an opening, a lid)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Primitive kind={self.kind!r}; allowed: {KINDS}")
        if self.texture not in TEXTURES:
            raise ValueError(f"Primitive texture={self.texture!r}; allowed: {TEXTURES}")
        centre = np.asarray(self.centre, np.float64).reshape(-1)
        if centre.shape != (3,):
            raise ValueError(f"Primitive centre={self.centre!r} must have 3 coordinates")
        object.__setattr__(self, "centre", tuple(centre.tolist()))
        object.__setattr__(self, "size", tuple(float(v) for v in np.asarray(self.size, np.float64).reshape(-1)))

    @property
    def rotation_matrix(self) -> np.ndarray:
        return np.eye(3) if self.rotation is None else np.asarray(self.rotation, np.float64)

    def bounding_radius(self) -> float:
        """Radius of a sphere about `centre` that contains the part."""
        s = self.size
        if self.kind in ("box", "ellipsoid"):
            return float(np.linalg.norm(s)) if self.kind == "box" else float(max(s))
        if self.kind == "frustum":
            return float(math.hypot(max(s[0], s[1]), s[2]))
        return float(s[0] + s[1])

    def transformed(self, scale: float, shift: np.ndarray) -> "Primitive":
        """The part after p -> scale * (p + shift) of the whole object."""
        return dataclasses.replace(
            self, size=tuple(float(v) * scale for v in self.size),
            centre=tuple((np.asarray(self.centre, np.float64) + shift) * scale), frequency=self.frequency / scale)


def rotation_x(degrees: float) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def rotation_y(degrees: float) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def rotation_z(degrees: float) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def rotation_z_to(direction: Sequence[float]) -> np.ndarray:
    """A rotation taking local +z onto `direction` (Rodrigues)."""
    v = np.asarray(direction, np.float64)
    v = v / np.linalg.norm(v)
    z = np.array([0.0, 0.0, 1.0])
    c = float(z @ v)
    if c > 1 - 1e-12:
        return np.eye(3)
    if c < -1 + 1e-12:
        return rotation_x(180.0)
    axis = np.cross(z, v)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + k + k @ k / (1 + c)


def normalise_object(parts: Sequence[Primitive], radius: float = 1.0) -> list[Primitive]:
    """Centre the object on its bounding-box centre and scale it into a sphere of `radius`."""
    centres = np.array([p.centre for p in parts], np.float64)
    radii = np.array([p.bounding_radius() for p in parts])
    low, high = (centres - radii[:, None]).min(0), (centres + radii[:, None]).max(0)
    shift = -(low + high) / 2
    extent = np.max(np.linalg.norm(centres + shift, axis=1) + radii)
    return [p.transformed(radius / extent, shift) for p in parts]


def camera_frames(azimuth, elevation, roll, distance) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per view (V,) angles in degrees -> origins, forward, right, up (each (V, 3), float64)."""
    phi, theta, psi = (np.radians(np.mod(np.asarray(a, np.float64), 360.0)) for a in (azimuth, elevation, roll))
    distance = np.asarray(distance, np.float64)
    cp, sp, ct, st = np.cos(phi), np.sin(phi), np.cos(theta), np.sin(theta)
    toward_camera = np.stack([ct * cp, ct * sp, st], -1)
    right = np.stack([-sp, cp, np.zeros_like(sp)], -1)
    up = np.stack([-st * cp, -st * sp, ct], -1)
    cr, sr = np.cos(psi)[:, None], np.sin(psi)[:, None]
    right, up = cr * right - sr * up, sr * right + cr * up
    return distance[:, None] * toward_camera, -toward_camera, right, up


def _rays(azimuth, elevation, roll, distance, image_size: int, fov_degrees: float):
    origin, forward, right, up = camera_frames(azimuth, elevation, roll, distance)
    half = math.tan(math.radians(fov_degrees) / 2)
    coords = ((np.arange(image_size) + 0.5) / image_size * 2 - 1) * half
    u = np.broadcast_to(coords[None, :], (image_size, image_size)).reshape(-1)  # columns: left -> right
    v = np.broadcast_to(-coords[:, None], (image_size, image_size)).reshape(-1)  # rows: top -> bottom
    direction = (forward[:, None, :] + u[None, :, None] * right[:, None, :] + v[None, :, None] * up[:, None, :])
    direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
    origins = np.broadcast_to(origin[:, None, :], direction.shape)
    return origins.reshape(-1, 3), direction.reshape(-1, 3), (right, up, -forward)


def _solve_quadratic(a, b, c):
    """Both roots (inf where none), for a t^2 + b t + c = 0."""
    disc = b * b - 4 * a * c
    ok = disc >= 0
    sq = np.sqrt(np.where(ok, disc, 0))
    with np.errstate(divide="ignore", invalid="ignore"):
        t0 = (-b - sq) / (2 * a)
        t1 = (-b + sq) / (2 * a)
    t0 = np.where(ok & np.isfinite(t0), t0, np.inf)
    t1 = np.where(ok & np.isfinite(t1), t1, np.inf)
    return np.minimum(t0, t1), np.maximum(t0, t1)


def _nearest(candidates):
    """candidates: list of (t, normal (N,3)) with t = inf where invalid -> nearest t > eps and its normal."""
    best_t = np.full(candidates[0][0].shape, np.inf)
    best_n = np.zeros(candidates[0][0].shape + (3,))
    for t, n in candidates:
        t = np.where(t > _EPS, t, np.inf)
        closer = t < best_t
        best_t = np.where(closer, t, best_t)
        best_n = np.where(closer[:, None], n, best_n)
    return best_t, best_n


def _intersect_box(o, d, size):
    h = np.asarray(size)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / d
        t1, t2 = (-h - o) * inv, (h - o) * inv
    t_lo, t_hi = np.minimum(t1, t2), np.maximum(t1, t2)
    t_near, t_far = np.nanmax(t_lo, axis=1), np.nanmin(t_hi, axis=1)
    hit = (t_near <= t_far) & (t_near > _EPS)
    axis = np.argmax(t_lo, axis=1)
    n = np.zeros_like(o)
    n[np.arange(len(o)), axis] = -np.sign(d[np.arange(len(o)), axis])
    return np.where(hit, t_near, np.inf), n, None


def _intersect_ellipsoid(o, d, size, clip):
    r = np.asarray(size)
    os_, ds = o / r, d / r
    t0, t1 = _solve_quadratic((ds * ds).sum(1), 2 * (os_ * ds).sum(1), (os_ * os_).sum(1) - 1)
    candidates = []
    for t in (t0, t1):
        p = o + np.where(np.isfinite(t), t, 0)[:, None] * d
        valid = np.isfinite(t) & (p[:, 2] <= clip * r[2] + 1e-9)
        n = p / (r * r)
        candidates.append((np.where(valid, t, np.inf), n / np.linalg.norm(n, axis=1, keepdims=True).clip(1e-12)))
    is_cap = None
    if clip < 1:
        with np.errstate(divide="ignore", invalid="ignore"):
            tc = (clip * r[2] - o[:, 2]) / d[:, 2]
        p = o + np.where(np.isfinite(tc), tc, 0)[:, None] * d
        inside = (p[:, 0] / r[0]) ** 2 + (p[:, 1] / r[1]) ** 2 <= 1 - clip * clip
        cap_normal = np.broadcast_to(np.array([0.0, 0.0, 1.0]), o.shape)
        candidates.append((np.where(np.isfinite(tc) & inside, tc, np.inf), cap_normal))
    t, n = _nearest(candidates)
    if clip < 1:
        is_cap = n[:, 2] == 1.0
    return t, n, is_cap


def _intersect_frustum(o, d, size):
    r_bottom, r_top, h = size
    k1 = (r_top - r_bottom) / (2 * h)
    k0 = (r_top + r_bottom) / 2
    radius_o = k0 + k1 * o[:, 2]
    a = d[:, 0] ** 2 + d[:, 1] ** 2 - (k1 * d[:, 2]) ** 2
    b = 2 * (o[:, 0] * d[:, 0] + o[:, 1] * d[:, 1] - k1 * radius_o * d[:, 2])
    c = o[:, 0] ** 2 + o[:, 1] ** 2 - radius_o**2
    candidates = []
    for t in _solve_quadratic(a, b, c):
        p = o + np.where(np.isfinite(t), t, 0)[:, None] * d
        valid = np.isfinite(t) & (np.abs(p[:, 2]) <= h) & (k0 + k1 * p[:, 2] >= 0)
        n = np.stack([p[:, 0], p[:, 1], -k1 * (k0 + k1 * p[:, 2])], 1)
        candidates.append((np.where(valid, t, np.inf), n / np.linalg.norm(n, axis=1, keepdims=True).clip(1e-12)))
    for z, cap_radius in ((-h, r_bottom), (h, r_top)):
        with np.errstate(divide="ignore", invalid="ignore"):
            tc = (z - o[:, 2]) / d[:, 2]
        p = o + np.where(np.isfinite(tc), tc, 0)[:, None] * d
        valid = np.isfinite(tc) & (p[:, 0] ** 2 + p[:, 1] ** 2 <= cap_radius**2)
        candidates.append((np.where(valid, tc, np.inf), np.broadcast_to(np.array([0.0, 0.0, np.sign(z)]), o.shape)))
    t, n = _nearest(candidates)
    return t, n, (n[:, 2] == 1.0) & (np.abs(n[:, 0]) + np.abs(n[:, 1]) == 0)


def _torus_distance(p, major, minor):
    ring = np.sqrt(p[:, 0] ** 2 + p[:, 1] ** 2) - major
    return np.sqrt(ring**2 + p[:, 2] ** 2) - minor


def _intersect_torus(o, d, size, steps: int = 48):
    major, minor = size
    t = np.full(len(o), np.inf)
    n = np.zeros_like(o)
    bound = major + minor
    t0, t1 = _solve_quadratic((d * d).sum(1), 2 * (o * d).sum(1), (o * o).sum(1) - bound * bound)
    index = np.nonzero(np.isfinite(t0) & (t1 > 0))[0]
    if index.size == 0:
        return t, n, None
    oi, di = o[index], d[index]
    ti, t_exit = np.maximum(t0[index], 0.0), t1[index]
    for _ in range(steps):
        ti = ti + _torus_distance(oi + ti[:, None] * di, major, minor)
    p = oi + ti[:, None] * di
    hit = (np.abs(_torus_distance(p, major, minor)) < 1e-3 * max(minor, 1e-3)) & (ti <= t_exit)
    ring = np.sqrt(p[:, 0] ** 2 + p[:, 1] ** 2).clip(1e-12)
    normal = p - np.stack([p[:, 0] / ring * major, p[:, 1] / ring * major, np.zeros_like(ring)], 1)
    t[index] = np.where(hit, ti, np.inf)
    n[index] = normal / np.linalg.norm(normal, axis=1, keepdims=True).clip(1e-12)
    return t, n, None


def _albedo(part: Primitive, p_local: np.ndarray, is_cap) -> np.ndarray:
    colour = np.asarray(part.colour, np.float64)
    if part.texture == "solid":
        albedo = np.broadcast_to(colour, p_local.shape).copy()
    else:
        cells = np.floor(p_local * part.frequency).astype(np.int64)
        odd = (cells[:, 2] if part.texture == "stripes" else cells.sum(1)) % 2 == 1
        albedo = np.where(odd[:, None], np.asarray(part.colour2, np.float64), colour)
    if part.cap_colour is not None and is_cap is not None:
        albedo = np.where(is_cap[:, None], np.asarray(part.cap_colour, np.float64), albedo)
    return albedo


def trace(parts: Sequence[Primitive], origins: np.ndarray, directions: np.ndarray):
    """Nearest hit of each ray: (t (N,), world normal (N,3), albedo (N,3)); t = inf where nothing is hit."""
    best_t = np.full(len(origins), np.inf)
    best_n = np.zeros_like(origins)
    best_albedo = np.zeros_like(origins)
    for part in parts:
        rotation = part.rotation_matrix
        centre = np.asarray(part.centre, np.float64)
        # Cull rays that miss the part's bounding sphere before the exact test (parts cover few pixels each).
        rel = origins - centre
        b = (rel * directions).sum(1)
        disc = b * b - ((rel * rel).sum(1) - part.bounding_radius() ** 2 * 1.0001)
        index = np.nonzero((disc >= 0) & (-b + np.sqrt(np.maximum(disc, 0)) > 0))[0]
        if index.size == 0:
            continue
        o_local, d_local = rel[index] @ rotation, directions[index] @ rotation
        if part.kind == "box":
            t, n, is_cap = _intersect_box(o_local, d_local, part.size)
        elif part.kind == "ellipsoid":
            t, n, is_cap = _intersect_ellipsoid(o_local, d_local, part.size, part.clip)
        elif part.kind == "frustum":
            t, n, is_cap = _intersect_frustum(o_local, d_local, part.size)
        else:
            t, n, is_cap = _intersect_torus(o_local, d_local, part.size)
        closer = t < best_t[index]
        if not closer.any():
            continue
        hit = index[closer]
        t_hit = t[closer]
        best_t[hit] = t_hit
        best_n[hit] = n[closer] @ rotation.T
        p_local = o_local[closer] + t_hit[:, None] * d_local[closer]
        best_albedo[hit] = _albedo(part, p_local, None if is_cap is None else is_cap[closer])
    return best_t, best_n, best_albedo


def render_views(parts: Sequence[Primitive], azimuth, elevation, roll, distance, *, image_size: int = 32,
                 background=None, fov_degrees: float = DEFAULT_FOV_DEGREES, light=DEFAULT_LIGHT,
                 chunk_rays: int = 1 << 16, return_hit_mask: bool = False):
    """Float32 images (V, S, S, 3) in [0, 1] of one object from V viewpoints (angles in degrees).

    background: None (mid grey), an (V, 3) array of colours, or an (V, S, S, 3) array of background images.
    light: direction towards the light in the camera frame (right, up, towards the viewer).
    return_hit_mask: also return the (V, S, S) bool mask of pixels whose ray hits the object.
    """
    azimuth, elevation, roll, distance = (np.atleast_1d(np.asarray(a, np.float64))
                                          for a in (azimuth, elevation, roll, distance))
    num_views = len(azimuth)
    if not all(len(a) == num_views for a in (elevation, roll, distance)):
        raise ValueError("azimuth, elevation, roll and distance must have the same length")
    if np.any(distance <= 1.0):
        raise ValueError(f"distance={distance.min()} must exceed 1 (objects fill the unit sphere)")
    light = np.asarray(light, np.float64)
    light = light / np.linalg.norm(light)
    pixels = image_size * image_size
    views_per_chunk = max(1, chunk_rays // pixels)
    out = np.empty((num_views, pixels, 3), np.float64)
    hit_mask = np.empty((num_views, pixels), bool)
    for start in range(0, num_views, views_per_chunk):
        stop = min(num_views, start + views_per_chunk)
        sl = slice(start, stop)
        origins, directions, (right, up, back) = _rays(azimuth[sl], elevation[sl], roll[sl], distance[sl],
                                                       image_size, fov_degrees)
        t, normal, albedo = trace(parts, origins, directions)
        light_world = light[0] * right + light[1] * up + light[2] * back  # (v, 3)
        lambert = np.einsum("vpc,vc->vp", normal.reshape(stop - start, pixels, 3), light_world).clip(0, None)
        shaded = albedo.reshape(stop - start, pixels, 3) * (AMBIENT + DIFFUSE * lambert)[..., None]
        hit = np.isfinite(t).reshape(stop - start, pixels)
        if background is None:
            bg = np.full((stop - start, pixels, 3), 0.5)
        else:
            bg = np.asarray(background, np.float64)[sl]
            bg = np.broadcast_to(bg.reshape(stop - start, -1, 3), (stop - start, pixels, 3))
        out[sl] = np.where(hit[..., None], shaded, bg)
        hit_mask[sl] = hit
    images = out.reshape(num_views, image_size, image_size, 3).clip(0, 1).astype(np.float32)
    if return_hit_mask:
        return images, hit_mask.reshape(num_views, image_size, image_size)
    return images
