"""SynthObjects: a procedural world of captioned chairs and tables, ray-cast analytically, for TuneMV3D.

Every object is a union of primitives (oriented boxes, capped cylinders, spheres) built from an
:class:`ObjectParams`: chairs (seat, a solid or slatted back, optional armrests, three or four legs or a
pedestal) and tables (a square, rectangular or round top on three or four legs or a pedestal), with varied
proportions and colours from a fixed palette. :func:`sample_object` is a pure function of ``(seed, object_id)``
and :func:`caption` a pure function of the parameters, so captions name exactly what the geometry shows.

Frame and cameras follow ``my3dgen_hf/tunemv3d/cameras.py``: the world is y-up, a chair faces +z (its back is
at -z), every object is centred on its bounding box and scaled so that the box's half-diagonal is
``FIT_RADIUS`` (0.6, inside the NeuS bounding sphere and, from ``camera_distance`` 2 with a 40 degree field
of view, inside every view). :func:`render_views` casts one ray per (sub)pixel with ``pixel_rays``;
:func:`object_points`, :func:`object_sdf` and :func:`object_mesh` give the same geometry as ground truth.
:func:`export_dataset` writes the multi-view layout that ``my3dgen_hf/tunemv3d/data.py`` reads.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..tunemv3d.cameras import orbit_cameras, pixel_rays, split_labels
from ..tunemv3d.data import write_cameras
from ..utils.io import atomic_path, atomic_write_text
from .synthheads import _atomic_write_json, _jsonable, _r, _rc, _save_png, _tupleize

__all__ = [
    "CATEGORIES",
    "PALETTE",
    "SUPPORTS",
    "SYNTHOBJECTS_VERSION",
    "ObjectParams",
    "Primitive",
    "caption",
    "chamfer_distance",
    "export_dataset",
    "object_cameras",
    "object_mesh",
    "object_points",
    "object_primitives",
    "object_sdf",
    "render_primitives",
    "render_views",
    "sample_object",
]

SYNTHOBJECTS_VERSION = "1.0"
CATEGORIES = ("chair", "table")
SUPPORTS = ("four_legs", "three_legs", "pedestal")
FIT_RADIUS = 0.6  # half-diagonal of every object's bounding box (world units)
CAMERA_DISTANCE = 2.0
FOV_DEGREES = 40.0
ELEVATION_RANGE = (5.0, 40.0)  # degrees, as in tunemv3d/toy_data.py

# Lambertian shading: ambient + diffuse * max(n . light, 0), one directional light from above and in front.
LIGHT_DIR = (0.4, 0.8, 0.45)
AMBIENT = 0.35
DIFFUSE = 0.65

PALETTE = {
    "red": (0.80, 0.12, 0.10),
    "orange": (0.95, 0.50, 0.10),
    "yellow": (0.92, 0.80, 0.15),
    "green": (0.15, 0.60, 0.20),
    "teal": (0.08, 0.55, 0.55),
    "blue": (0.15, 0.30, 0.85),
    "purple": (0.50, 0.20, 0.70),
    "pink": (0.95, 0.50, 0.70),
    "brown": (0.45, 0.27, 0.12),
    "black": (0.08, 0.08, 0.08),
    "grey": (0.55, 0.55, 0.55),
    "white": (0.93, 0.93, 0.90),
}

Color = tuple  # (r, g, b) floats in [0, 1]
_KINDS = ("box", "cylinder", "sphere")
_IDENTITY = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))

# --------------------------------------------------------------------------------------------------------------
# Primitives
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Primitive:
    """A solid in world space: ``kind`` "box" (half extents ``half``), "cylinder" (along its local y axis,
    ``half = (radius, half_height, radius)``) or "sphere" (``half = (radius,) * 3``), centred at ``center``.

    ``rotation`` is local-to-world (its columns are the local axes in world coordinates): a local point q sits
    at ``center + rotation @ q``. ``rgb`` is the albedo, ``part`` a name ("seat", "leg", ...).
    """

    kind: str
    center: tuple
    half: tuple
    rgb: Color = (0.5, 0.5, 0.5)
    rotation: tuple = _IDENTITY
    part: str = ""

    def __post_init__(self):
        if self.kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, got {self.kind!r}")

    def _matrix(self) -> np.ndarray:
        return np.asarray(self.rotation, dtype=np.float64)

    def world_half_extent(self) -> np.ndarray:
        """Half extents [3] of the axis-aligned bounding box."""
        R, h = self._matrix(), np.asarray(self.half, dtype=np.float64)
        if self.kind == "box":
            return np.abs(R) @ h
        if self.kind == "cylinder":
            a = R[:, 1]
            return np.abs(a) * h[1] + h[0] * np.sqrt(np.clip(1 - a * a, 0, 1))
        return np.full(3, h[0])

    def transformed(self, scale: float, offset) -> Primitive:
        """This primitive after ``p -> scale * (p - offset)``."""
        c = scale * (np.asarray(self.center, dtype=np.float64) - np.asarray(offset, dtype=np.float64))
        return dataclasses.replace(self, center=tuple(c.tolist()), half=tuple((scale * np.asarray(self.half)).tolist()))


def _frame(axis) -> tuple:
    """A rotation whose local y axis is ``axis`` and whose local x axis stays as close to world x as possible."""
    y = np.asarray(axis, dtype=np.float64)
    y = y / np.linalg.norm(y)
    x = np.array([1.0, 0.0, 0.0]) - y[0] * y
    if np.linalg.norm(x) < 1e-6:
        x = np.array([0.0, 0.0, 1.0]) - y[2] * y
    x = x / np.linalg.norm(x)
    z = np.cross(x, y)
    return tuple(map(tuple, np.stack([x, y, z], axis=1).tolist()))


def _segment(kind: str, a, b, radius: float, rgb, part: str) -> Primitive:
    """A box (square section, half width ``radius``) or cylinder from point a to point b."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    half_len = float(np.linalg.norm(b - a)) / 2
    return Primitive(kind, tuple(((a + b) / 2).tolist()), (radius, half_len, radius), rgb, _frame(b - a), part)


# --------------------------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectParams:
    """Everything that defines one object. Lengths are in design units (the seat or top sits ``height`` above
    the floor); :func:`object_primitives` centres and scales the object into the world frame.

    Categorical fields (``colour``, ``support``, ``support_weight``, ``back``, ``back_style``, ``armrests``,
    ``top_shape``, ``stature``) are what :func:`caption` names; the continuous ones vary within each category.
    """

    object_id: int
    seed: int
    category: str  # "chair" | "table"
    colour: str  # palette name of the seat, back and armrests (chair) or of the top (table)
    leg_colour: str  # palette name of the legs or pedestal (may equal colour)
    rgb: Color  # albedo of colour (jittered around the palette entry)
    leg_rgb: Color
    # seat (chair) / top (table)
    top_shape: str  # chair: "square"; table: "square" | "rectangular" | "round"
    width: float  # x extent (round: diameter)
    depth: float  # z extent
    height: float  # floor to the top surface
    thickness: float
    stature: str  # table: "low" (coffee table) | "tall" (dining table); chair: "standard"
    # support
    support: str  # "four_legs" | "three_legs" | "pedestal"
    support_weight: str  # "thin" | "thick"
    support_shape: str  # leg section "square" | "round" (a pedestal is round)
    support_radius: float  # leg half width / radius, or the pedestal column's radius
    leg_splay: float  # outward tilt of the legs, radians
    base_radius: float  # pedestal base disc (0 without a pedestal)
    base_thickness: float
    # back and armrests (chair)
    back: str  # "none" (table) | "low" | "high"
    back_style: str  # "none" | "solid" | "slatted"
    back_height: float  # above the seat
    back_tilt: float  # backward lean, radians
    back_thickness: float
    num_slats: int
    armrests: bool
    arm_height: float  # above the seat
    caption_style: int  # which caption template (0..2)

    def to_dict(self) -> dict:
        return _jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict) -> ObjectParams:
        return cls(**{k: _tupleize(v) for k, v in d.items()})


_CATEGORY_STREAM = {"chair": 0xC4A1, "table": 0x7AB1}


def _check_id(object_id: int) -> None:
    if int(object_id) < 0:
        raise ValueError(f"object_id must be >= 0, got {object_id}")


def _choose_category(seed: int, object_id: int, category: str) -> str:
    if category == "mixed":
        return CATEGORIES[int(np.random.default_rng([int(seed) & 0xFFFFFFFF, int(object_id), 0x3C]).integers(2))]
    if category not in CATEGORIES:
        raise ValueError(f"category must be one of {CATEGORIES + ('mixed',)}, got {category!r}")
    return category


def sample_object(seed: int, object_id: int, category: str = "chair") -> ObjectParams:
    """Object ``object_id`` of world ``seed`` (a pure function of both). ``category``: "chair", "table" or
    "mixed" (chair or table, drawn per object; the object then equals the one sampled with its category)."""
    _check_id(object_id)
    category = _choose_category(seed, object_id, category)
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(object_id), _CATEGORY_STREAM[category]])
    u = rng.uniform

    names = list(PALETTE)
    colour = names[int(rng.integers(len(names)))]
    others = [n for n in names if n != colour]
    leg_colour = colour if rng.uniform() < 0.5 else others[int(rng.integers(len(others)))]
    rgb = np.asarray(PALETTE[colour]) + rng.normal(0, 0.025, 3)
    leg_rgb = np.asarray(PALETTE[leg_colour]) + rng.normal(0, 0.025, 3)
    support = SUPPORTS[int(rng.choice(3, p=(0.6, 0.15, 0.25) if category == "chair" else (0.55, 0.15, 0.3)))]
    thick = bool(rng.uniform() < 0.5)
    shape = ("square", "round")[int(rng.uniform() < 0.5)]
    style = int(rng.integers(3))

    if category == "chair":
        width, depth, height, thickness = u(0.38, 0.56), u(0.36, 0.52), u(0.34, 0.48), u(0.03, 0.07)
        top_shape, stature = "square", "standard"
        high = bool(rng.uniform() < 0.5)
        back_height = u(0.42, 0.58) if high else u(0.18, 0.28)
        slatted = bool(rng.uniform() < 0.4)
        num_slats = int(rng.integers(3, 6)) if slatted else 0
        back_tilt, back_thickness = u(0.0, 0.28), u(0.025, 0.05)
        armrests = bool(rng.uniform() < 0.4)
        arm_height = u(0.15, 0.24) if armrests else 0.0
        if support == "pedestal":
            radius = u(0.055, 0.08) if thick else u(0.025, 0.038)
            base_radius, base_thickness = u(0.17, 0.24), u(0.02, 0.04)
        else:
            radius = u(0.028, 0.042) if thick else u(0.012, 0.019)
            base_radius = base_thickness = 0.0
        splay = u(0.0, 0.12) if support != "pedestal" else 0.0
        back, back_style = ("high" if high else "low"), ("slatted" if slatted else "solid")
    else:
        top_shape = ("square", "rectangular", "round")[int(rng.integers(3))]
        width = u(0.75, 1.1)
        depth = {"square": width, "rectangular": width * u(0.5, 0.7), "round": width}[top_shape]
        low = bool(rng.uniform() < 0.5)
        height, thickness, stature = (u(0.3, 0.42) if low else u(0.62, 0.78)), u(0.03, 0.07), ("low" if low else "tall")
        if support == "pedestal":
            radius = u(0.07, 0.1) if thick else u(0.03, 0.045)
            base_radius, base_thickness = width * u(0.25, 0.35), u(0.025, 0.045)
        else:
            radius = u(0.034, 0.05) if thick else u(0.015, 0.024)
            base_radius = base_thickness = 0.0
        splay = u(0.0, 0.08) if support != "pedestal" else 0.0
        back = back_style = "none"
        back_height = back_tilt = back_thickness = arm_height = 0.0
        num_slats, armrests = 0, False

    return ObjectParams(
        object_id=int(object_id),
        seed=int(seed),
        category=category,
        colour=colour,
        leg_colour=leg_colour,
        rgb=_rc(rgb),
        leg_rgb=_rc(leg_rgb),
        top_shape=top_shape,
        width=_r(width),
        depth=_r(depth),
        height=_r(height),
        thickness=_r(thickness),
        stature=stature,
        support=support,
        support_weight="thick" if thick else "thin",
        support_shape="round" if support == "pedestal" else shape,
        support_radius=_r(radius),
        leg_splay=_r(splay),
        base_radius=_r(base_radius),
        base_thickness=_r(base_thickness),
        back=back,
        back_style=back_style,
        back_height=_r(back_height),
        back_tilt=_r(back_tilt),
        back_thickness=_r(back_thickness),
        num_slats=num_slats,
        armrests=armrests,
        arm_height=_r(arm_height),
        caption_style=style,
    )


# --------------------------------------------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------------------------------------------


def _a(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _support_phrase(p: ObjectParams) -> str:
    col = f"{p.leg_colour} " if p.leg_colour != p.colour else ""
    if p.support == "pedestal":
        return f"a {p.support_weight} {col}pedestal"
    return f"{'four' if p.support == 'four_legs' else 'three'} {p.support_weight} {col}legs"


def caption(p: ObjectParams) -> str:
    """A caption naming the object's category, colours, support, leg weight and (chairs) back and armrests, or
    (tables) top shape and height, e.g. "a red chair with a high slatted back, four thin black legs and armrests"
    or "a low round blue table with a thick pedestal"."""
    support, style = _support_phrase(p), p.caption_style % 3
    if p.category == "chair":
        back = f"a {p.back} {p.back_style} back"
        if style == 0:
            parts = [back, support] + (["armrests"] if p.armrests else [])
            return f"{_a(p.colour)} {p.colour} chair with {', '.join(parts[:-1])} and {parts[-1]}"
        if style == 1:
            noun = "armchair" if p.armrests else "chair"
            return f"{_a(p.colour)} {p.colour} {noun} with {support} and {back}"
        return f"{_a(p.colour)} {p.colour} chair on {support}, with {back}{' and armrests' if p.armrests else ''}"
    if style == 0:
        return f"a {p.stature} {p.top_shape} {p.colour} table with {support}"
    if style == 1:
        noun = "coffee table" if p.stature == "low" else "dining table"
        return f"a {p.top_shape} {p.colour} {noun} with {support}"
    return f"a {p.stature} {p.colour} table with a {p.top_shape} top and {support}"


# --------------------------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------------------------


def _leg_positions(p: ObjectParams) -> list[tuple[float, float]]:
    """(x, z) of the leg tops under the seat / top."""
    if p.top_shape == "round":
        r = 0.65 * p.width / 2
        angles = np.deg2rad([45, 135, 225, 315] if p.support == "four_legs" else [90, 210, 330])
        return [(r * math.cos(a), r * math.sin(a)) for a in angles]
    inset = p.support_radius + (0.015 if p.category == "chair" else 0.04)
    x, z = p.width / 2 - inset, p.depth / 2 - inset
    if p.support == "four_legs":
        return [(-x, -z), (x, -z), (x, z), (-x, z)]
    return [(-x, z), (x, z), (0.0, -z)]


def _design_primitives(p: ObjectParams) -> list[Primitive]:
    """The object in design units: floor at y = 0, centred in x and z."""
    prims = []
    kind = "cylinder" if p.support_shape == "round" else "box"
    top_y = p.height - p.thickness / 2  # centre of the seat / top
    if p.top_shape == "round":
        prims.append(Primitive("cylinder", (0.0, top_y, 0.0), (p.width / 2, p.thickness / 2, p.width / 2), p.rgb, part="top"))
    else:
        prims.append(Primitive("box", (0.0, top_y, 0.0), (p.width / 2, p.thickness / 2, p.depth / 2), p.rgb,
                               part="seat" if p.category == "chair" else "top"))

    if p.support == "pedestal":
        bt = p.base_thickness
        prims.append(Primitive("cylinder", (0.0, bt / 2, 0.0), (p.base_radius, bt / 2, p.base_radius), p.leg_rgb, part="base"))
        prims.append(_segment("cylinder", (0, bt / 2, 0), (0, top_y, 0), p.support_radius, p.leg_rgb, "column"))
    else:
        for x, z in _leg_positions(p):
            n = math.hypot(x, z)
            out = math.tan(p.leg_splay) * top_y / max(n, 1e-9)
            prims.append(_segment(kind, (x, top_y, z), (x + x * out, 0.0, z + z * out), p.support_radius, p.leg_rgb, "leg"))

    if p.category == "chair":
        tb, w, d = p.back_thickness, p.width, p.depth
        pivot = np.array([0.0, top_y, -d / 2 + tb / 2])
        axis = np.array([0.0, math.cos(p.back_tilt), -math.sin(p.back_tilt)])
        rot = _frame(axis)
        length = p.back_height + p.thickness / 2  # from the seat's mid-plane to the top of the back

        def back_part(x, y0, y1, half_w, half_t, part):
            c = pivot + np.array([x, 0.0, 0.0]) + axis * (y0 + y1) / 2
            return Primitive("box", tuple(c.tolist()), (half_w, (y1 - y0) / 2, half_t), p.rgb, rot, part)

        if p.back_style == "solid":
            prims.append(back_part(0.0, 0.0, length, w / 2, tb / 2, "back"))
        else:
            rail = min(max(0.22 * p.back_height, 0.04), 0.09)
            prims.append(back_part(0.0, length - rail, length, w / 2, tb / 2, "rail"))
            n = p.num_slats
            sw = 0.45 * w / (2 * n - 1)  # slats and gaps about equally wide
            for k in range(n):
                x = -w / 2 + sw + k * (w - 2 * sw) / (n - 1)
                prims.append(back_part(x, 0.0, length - rail + 0.01, sw, 0.4 * tb, "slat"))
        if p.armrests:
            aw, at = 0.045, 0.03
            y = p.height + p.arm_height
            z_back = -d / 2 - math.sin(p.back_tilt) * (p.arm_height + p.thickness / 2)
            z_front = d / 2 - 0.02
            post_z = z_front - 0.035
            for s in (-1.0, 1.0):
                x = s * (w / 2 - aw / 2)
                prims.append(Primitive("box", (x, y, (z_back + z_front) / 2), (aw / 2, at / 2, (z_front - z_back) / 2), p.rgb,
                                       part="arm"))
                prims.append(_segment(kind, (x, top_y, post_z), (x, y, post_z), 0.4 * aw, p.rgb, "arm_post"))
    return prims


def object_primitives(p: ObjectParams) -> list[Primitive]:
    """The object's primitives in the world frame: bounding box centred at the origin, half-diagonal FIT_RADIUS."""
    prims = _design_primitives(p)
    lo = np.min([np.asarray(q.center) - q.world_half_extent() for q in prims], axis=0)
    hi = np.max([np.asarray(q.center) + q.world_half_extent() for q in prims], axis=0)
    scale = FIT_RADIUS / (np.linalg.norm(hi - lo) / 2)
    return [q.transformed(scale, (lo + hi) / 2) for q in prims]


def _prim_arrays(prims: Sequence[Primitive]):
    C = np.array([q.center for q in prims], dtype=np.float64)
    R = np.array([q.rotation for q in prims], dtype=np.float64)
    H = np.array([q.half for q in prims], dtype=np.float64)
    K = np.array([_KINDS.index(q.kind) for q in prims])
    return C, R, H, K


def _local_sdf(q: np.ndarray, kind: int, h: np.ndarray) -> np.ndarray:
    """Exact signed distance [...] of local points q [..., 3] to one primitive."""
    if kind == 0:
        d = np.abs(q) - h
        return np.linalg.norm(np.maximum(d, 0), axis=-1) + np.minimum(d.max(-1), 0)
    if kind == 1:
        dr, dy = np.hypot(q[..., 0], q[..., 2]) - h[0], np.abs(q[..., 1]) - h[1]
        return np.minimum(np.maximum(dr, dy), 0) + np.hypot(np.maximum(dr, 0), np.maximum(dy, 0))
    return np.linalg.norm(q, axis=-1) - h[0]


def _sdf_per_primitive(prims: Sequence[Primitive], points) -> np.ndarray:
    C, R, H, K = _prim_arrays(prims)
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    return np.stack([_local_sdf((pts - C[i]) @ R[i], K[i], H[i]) for i in range(len(prims))])  # [P, N]


def object_sdf(p: ObjectParams, points) -> np.ndarray:
    """Signed distance [N] of world points [N, 3] to the object (min over its primitives: exact outside, a
    bound inside)."""
    return _sdf_per_primitive(object_primitives(p), points).min(0)


def _surface_samples(q: Primitive, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n uniform samples on one primitive's surface (local frame): points and outward normals [n, 3]."""
    h = np.asarray(q.half, dtype=np.float64)
    if q.kind == "box":
        areas = np.array([h[1] * h[2], h[0] * h[2], h[0] * h[1]])
        axis = rng.choice(3, size=n, p=areas / areas.sum())
        sign = np.where(rng.uniform(size=n) < 0.5, -1.0, 1.0)
        pts = rng.uniform(-1, 1, size=(n, 3)) * h
        pts[np.arange(n), axis] = sign * h[axis]
        nrm = np.zeros((n, 3))
        nrm[np.arange(n), axis] = sign
        return pts, nrm
    if q.kind == "cylinder":
        r, hh = h[0], h[1]
        side = rng.uniform(size=n) < (2 * hh) / (2 * hh + r)  # side area 4 pi r hh vs caps 2 pi r^2
        phi = rng.uniform(0, 2 * np.pi, size=n)
        rho = np.where(side, r, r * np.sqrt(rng.uniform(size=n)))
        cap = np.where(rng.uniform(size=n) < 0.5, -1.0, 1.0)
        y = np.where(side, rng.uniform(-hh, hh, size=n), cap * hh)
        pts = np.stack([rho * np.cos(phi), y, rho * np.sin(phi)], -1)
        nrm = np.where(side[:, None], np.stack([np.cos(phi), np.zeros(n), np.sin(phi)], -1),
                       np.stack([np.zeros(n), cap, np.zeros(n)], -1))
        return pts, nrm
    nrm = rng.normal(size=(n, 3))
    nrm /= np.linalg.norm(nrm, axis=-1, keepdims=True)
    return nrm * h[0], nrm


def _area(q: Primitive) -> float:
    h = q.half
    if q.kind == "box":
        return 8 * (h[0] * h[1] + h[1] * h[2] + h[0] * h[2])
    if q.kind == "cylinder":
        return 4 * math.pi * h[0] * h[1] + 2 * math.pi * h[0] ** 2
    return 4 * math.pi * h[0] ** 2


def object_points(p: ObjectParams, n: int, seed: int = 0, return_normals: bool = False):
    """n points [n, 3] (float64) sampled uniformly on the object's outer surface (the union's boundary: surface
    parts inside another primitive are left out), for Chamfer distances; with outward normals if asked."""
    prims = object_primitives(p)
    rng = np.random.default_rng(int(seed))
    areas = np.array([_area(q) for q in prims])
    got_p, got_n, have = [], [], 0
    while have < n:
        m = max(2 * (n - have), 1024)
        which = rng.choice(len(prims), size=m, p=areas / areas.sum())
        pts, nrm = np.zeros((m, 3)), np.zeros((m, 3))
        for i, q in enumerate(prims):
            sel = which == i
            lp, ln = _surface_samples(q, int(sel.sum()), rng)
            R = q._matrix()
            pts[sel], nrm[sel] = lp @ R.T + np.asarray(q.center), ln @ R.T
        sdf = _sdf_per_primitive(prims, pts)
        sdf[which, np.arange(m)] = np.inf  # a point is on its own primitive: only the others can hide it
        keep = sdf.min(0) > -1e-7
        got_p.append(pts[keep])
        got_n.append(nrm[keep])
        have += int(keep.sum())
    pts, nrm = np.concatenate(got_p)[:n], np.concatenate(got_n)[:n]
    return (pts, nrm) if return_normals else pts


def _unit_box_mesh():
    v = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=np.float64)
    f = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                  [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]])
    return v, f


def _unit_cylinder_mesh(segments: int):
    a = 2 * np.pi * np.arange(segments) / segments
    ring = np.stack([np.cos(a), np.zeros(segments), np.sin(a)], -1)
    v = np.concatenate([ring - [0, 1, 0], ring + [0, 1, 0], [[0, -1, 0], [0, 1, 0]]])
    i, j = np.arange(segments), (np.arange(segments) + 1) % segments
    s, b, t = segments, 2 * segments, 2 * segments + 1
    f = np.concatenate([np.stack([i, s + i, s + j], -1), np.stack([i, s + j, j], -1),
                        np.stack([np.full(s, b), i, j], -1), np.stack([np.full(s, t), s + j, s + i], -1)])
    return v, f


def _unit_sphere_mesh(segments: int):
    rows = max(segments // 2, 2)
    th = np.pi * np.arange(1, rows) / rows
    ph = 2 * np.pi * np.arange(segments) / segments
    v = np.stack([np.sin(th)[:, None] * np.cos(ph), np.repeat(np.cos(th)[:, None], segments, 1),
                  np.sin(th)[:, None] * np.sin(ph)], -1).reshape(-1, 3)
    v = np.concatenate([v, [[0, 1, 0], [0, -1, 0]]])
    top, bottom = len(v) - 2, len(v) - 1
    idx = np.arange((rows - 1) * segments).reshape(rows - 1, segments)
    nxt = np.roll(idx, -1, axis=1)
    faces = [np.stack([np.full(segments, top), nxt[0], idx[0]], -1),
             np.stack([np.full(segments, bottom), idx[-1], nxt[-1]], -1)]
    for r in range(rows - 2):
        faces += [np.stack([idx[r], nxt[r], nxt[r + 1]], -1), np.stack([idx[r], nxt[r + 1], idx[r + 1]], -1)]
    return v, np.concatenate(faces)


def object_mesh(p: ObjectParams, segments: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(vertices [V, 3] float64, faces [F, 3] int64): the closed, outward-wound meshes of the object's
    primitives (cylinders and spheres with ``segments`` sides), concatenated. Primitives overlap where they
    join: this is a triangle soup of the parts, not a boolean union; use :func:`object_points` for metrics."""
    verts, faces, n = [], [], 0
    for q in object_primitives(p):
        v, f = _unit_box_mesh() if q.kind == "box" else _unit_cylinder_mesh(segments) if q.kind == "cylinder" else _unit_sphere_mesh(segments)
        verts.append((v * np.asarray(q.half)) @ q._matrix().T + np.asarray(q.center))
        faces.append(f + n)
        n += len(v)
    return np.concatenate(verts), np.concatenate(faces).astype(np.int64)


def chamfer_distance(points_a, points_b, squared: bool = False) -> float:
    """Symmetric Chamfer distance between point sets [N, 3] and [M, 3]: the mean of the two directions' mean
    nearest-neighbour distances (Chamfer-L1 in the Occupancy Networks sense); ``squared`` averages squared
    distances instead (Chamfer-L2)."""
    a = torch.as_tensor(np.asarray(points_a, dtype=np.float64).reshape(-1, 3))
    b = torch.as_tensor(np.asarray(points_b, dtype=np.float64).reshape(-1, 3))
    if len(a) == 0 or len(b) == 0:
        raise ValueError("chamfer_distance needs two non-empty point sets")

    def one_way(x, y):
        chunk = max(1, (1 << 23) // len(y))  # 64 MiB of float64 distances at a time
        d = torch.cat([torch.cdist(x[i : i + chunk], y, compute_mode="donot_use_mm_for_euclid_dist").min(1).values
                       for i in range(0, len(x), chunk)])
        return (d**2 if squared else d).mean()

    return float((one_way(a, b) + one_way(b, a)) / 2)


# --------------------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------------------


def _prim_tensors(prims: Sequence[Primitive]) -> dict:
    C, R, H, K = _prim_arrays(prims)
    f = torch.float32
    return {"C": torch.as_tensor(C, dtype=f), "R": torch.as_tensor(R, dtype=f), "H": torch.as_tensor(H, dtype=f),
            "K": torch.as_tensor(K), "rgb": torch.tensor([q.rgb for q in prims], dtype=f)}


def _slab(o, d, lo, hi):
    """Entry and exit ray parameters of the slab lo <= o + t d <= hi (per component)."""
    inv = 1.0 / torch.where(d.abs() < 1e-9, torch.full_like(d, 1e-9), d)
    t0, t1 = (lo - o) * inv, (hi - o) * inv
    return torch.minimum(t0, t1), torch.maximum(t0, t1)


def _intervals(o, d, kind: int, h):
    """Entry/exit parameters [P, N] of rays (local frames o, d [P, N, 3]) through primitives of one kind (h [P, 3])."""
    h = h[:, None]
    if kind == 0:
        tn, tf = _slab(o, d, -h, h)
        return tn.max(-1).values, tf.min(-1).values
    if kind == 1:
        a = d[..., 0] ** 2 + d[..., 2] ** 2
        b = o[..., 0] * d[..., 0] + o[..., 2] * d[..., 2]
        c = o[..., 0] ** 2 + o[..., 2] ** 2 - h[..., 0] ** 2
        disc = b * b - a * c
        sq = disc.clamp(min=0).sqrt()
        a_safe = a.clamp(min=1e-12)
        inf = torch.full_like(a, float("inf"))
        axial = a < 1e-12  # parallel to the axis: inside the infinite cylinder or never
        r0 = torch.where(axial, torch.where(c <= 0, -inf, inf), torch.where(disc > 0, (-b - sq) / a_safe, inf))
        r1 = torch.where(axial, torch.where(c <= 0, inf, -inf), torch.where(disc > 0, (-b + sq) / a_safe, -inf))
        y0, y1 = _slab(o[..., 1], d[..., 1], -h[..., 1], h[..., 1])
        return torch.maximum(r0, y0), torch.minimum(r1, y1)
    b = (o * d).sum(-1)
    disc = b * b - ((o * o).sum(-1) - h[..., 0] ** 2)
    sq = disc.clamp(min=0).sqrt()
    inf = torch.full_like(b, float("inf"))
    return torch.where(disc > 0, -b - sq, inf), torch.where(disc > 0, -b + sq, -inf)


def _local_normals(q, kind, h):
    """Outward local normals [N, 3] at local surface points q [N, 3] of primitives of kinds [N], half sizes h [N, 3]."""
    box_axis = (q.abs() / h).argmax(-1)
    box = torch.zeros_like(q).scatter_(1, box_axis[:, None], torch.sign(q.gather(1, box_axis[:, None])))
    radial = torch.stack([q[:, 0], torch.zeros_like(q[:, 0]), q[:, 2]], -1)
    on_cap = q[:, 1].abs() / h[:, 1] > radial.norm(dim=-1) / h[:, 0]
    cyl = torch.where(on_cap[:, None], torch.stack([torch.zeros_like(q[:, 0]), torch.sign(q[:, 1]), torch.zeros_like(q[:, 0])], -1), radial)
    n = torch.where((kind == 0)[:, None], box, torch.where((kind == 1)[:, None], cyl, q))
    return torch.nn.functional.normalize(n, dim=-1)


def _cast(T: dict, o, d):
    """First hits of world rays o, d [N, 3]: ray parameter t [N] (inf on a miss), primitive index [N], world normal [N, 3]."""
    ol = torch.einsum("pnj,pjk->pnk", o[None] - T["C"][:, None], T["R"])  # local = R^T (o - c)
    dl = torch.einsum("nj,pjk->pnk", d, T["R"])
    t = torch.full(ol.shape[:2], float("inf"))
    for kind in range(3):
        sel = (T["K"] == kind).nonzero()[:, 0]
        if len(sel):
            tn, tf = _intervals(ol[sel], dl[sel], kind, T["H"][sel])
            t[sel] = torch.where((tf > tn) & (tn > 0), tn, torch.full_like(tn, float("inf")))
    t, idx = t.min(0)
    hit = torch.isfinite(t)
    rows = torch.arange(len(o))
    q = ol[idx, rows] + torch.where(hit, t, torch.zeros_like(t))[:, None] * dl[idx, rows]
    n_local = _local_normals(q, T["K"][idx], T["H"][idx])
    return t, idx, torch.einsum("nij,nj->ni", T["R"][idx], n_local)


def render_primitives(
    prims: Sequence[Primitive],
    cameras,
    resolution: int,
    supersample: int = 1,
    return_aux: bool = False,
    max_rays: int = 1 << 16,
):
    """Ray-cast a union of primitives from cameras [V, 25] (labels of ``tunemv3d/cameras.py``).

    Returns RGBA uint8 [V, R, R, 4]: straight (not premultiplied) shaded colour, white where no sample hits, and
    alpha = the fraction of the ``supersample``^2 rays per pixel that hit. With ``return_aux`` also a dict with
    ``depth`` float32 [V, R, R] (camera z of the hits, averaged; inf on the background) and ``mask`` bool
    [V, R, R] (alpha >= 0.5).
    """
    resolution, ss = int(resolution), int(supersample)
    if resolution < 1 or ss < 1:
        raise ValueError("resolution and supersample must be >= 1")
    cams = torch.as_tensor(np.asarray(cameras, dtype=np.float32) if not torch.is_tensor(cameras) else cameras)
    cams = cams.detach().cpu().float().reshape(-1, 25)
    T = _prim_tensors(prims)
    light = torch.nn.functional.normalize(torch.tensor(LIGHT_DIR), dim=0)
    S = resolution * ss
    per_view = S * S
    chunk = max(1, max_rays // per_view)
    rgb_out, cov_out, depth_out = [], [], []
    for v0 in range(0, len(cams), chunk):
        cv = cams[v0 : v0 + chunk]
        o, d = pixel_rays(cv, S, S)  # [v, SS, 3]
        forward = split_labels(cv)[0][:, None, :3, 2]
        zscale = (d * forward).sum(-1).reshape(-1)  # camera z per unit of ray parameter
        o, d = o.reshape(-1, 3), d.reshape(-1, 3)
        rgb, hit, z = [], [], []
        for r0 in range(0, len(o), max_rays):
            t, idx, n = _cast(T, o[r0 : r0 + max_rays], d[r0 : r0 + max_rays])
            shade = AMBIENT + DIFFUSE * (n @ light).clamp(min=0)
            rgb.append(T["rgb"][idx] * shade[:, None])
            hit.append(torch.isfinite(t))
            z.append(t * zscale[r0 : r0 + max_rays])
        hit = torch.cat(hit).float().reshape(len(cv), resolution, ss, resolution, ss)
        rgb = torch.cat(rgb).reshape(len(cv), resolution, ss, resolution, ss, 3)
        z = torch.cat(z).reshape(len(cv), resolution, ss, resolution, ss)
        count = hit.sum((2, 4))
        rgb_sum = (rgb * hit[..., None]).sum((2, 4))
        rgb_out.append(torch.where(count[..., None] > 0, rgb_sum / count.clamp(min=1)[..., None], torch.ones_like(rgb_sum)))
        cov_out.append(count / (ss * ss))
        depth_out.append(torch.where(count > 0, torch.where(hit > 0, z, torch.zeros_like(z)).sum((2, 4)) / count.clamp(min=1),
                                     torch.full_like(count, float("inf"))))
    rgba = torch.cat([torch.cat(rgb_out), torch.cat(cov_out)[..., None]], -1)
    rgba = (rgba.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    if not return_aux:
        return rgba
    cov = torch.cat(cov_out)
    return rgba, {"depth": torch.cat(depth_out).numpy().astype(np.float32), "mask": (cov >= 0.5).numpy()}


def render_views(p: ObjectParams, cameras, resolution: int, supersample: int = 1, return_aux: bool = False):
    """RGBA uint8 [V, R, R, 4] of the object seen from cameras [V, 25] (see :func:`render_primitives`)."""
    return render_primitives(object_primitives(p), cameras, resolution, supersample, return_aux)


# --------------------------------------------------------------------------------------------------------------
# Cameras and dataset export
# --------------------------------------------------------------------------------------------------------------


def _van_der_corput(n: int) -> np.ndarray:
    """0, 1/2, 1/4, 3/4, 1/8, ...: every prefix of length 2^k is evenly spaced."""
    out = np.zeros(n)
    for i in range(n):
        x, f, k = 0.0, 0.5, i
        while k:
            x, k, f = x + f * (k & 1), k >> 1, f / 2
        out[i] = x
    return out


def _view_angles(seed: int, object_id: int, num_views: int, elevation_range) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(object_id), 0xCA3])
    azimuth = (rng.uniform(0, 360) + 360.0 * _van_der_corput(int(num_views))) % 360.0
    elevation = rng.uniform(elevation_range[0], elevation_range[1], size=int(num_views))
    return azimuth, elevation


def object_cameras(
    seed: int,
    object_id: int,
    num_views: int,
    elevation_range: Sequence[float] = ELEVATION_RANGE,
    camera_distance: float = CAMERA_DISTANCE,
    fov: float = FOV_DEGREES,
) -> torch.Tensor:
    """Labels [num_views, 25] of the object's views: cameras ``camera_distance`` from the origin looking at it, a
    random azimuth offset per object, elevations uniform in ``elevation_range`` (degrees). Azimuths follow the
    van der Corput order, so the first n views (n a power of two) are evenly spaced around the object and later
    views fill the gaps: the inputs and novel views of ``--num_views n --num_novel_views n'``."""
    _check_id(object_id)
    az, el = _view_angles(seed, object_id, num_views, elevation_range)
    return orbit_cameras(az, el, camera_distance, fov)


def _object_dirname(object_id: int) -> str:
    return f"{object_id:05d}"


def export_dataset(
    out_dir,
    num_objects: int,
    num_views: int,
    resolution: int = 64,
    seed: int = 0,
    category: str = "chair",
    object_offset: int = 0,
    supersample: int = 2,
    elevation_range: Sequence[float] = ELEVATION_RANGE,
    camera_distance: float = CAMERA_DISTANCE,
    fov: float = FOV_DEGREES,
    progress: bool = False,
) -> dict:
    """Write objects ``object_offset .. object_offset + num_objects - 1`` in the layout of ``tunemv3d/data.py``::

        out_dir/meta.json                    # settings + every object's id, folder, category, caption, params
        out_dir/00000/000.png 001.png ...    # RGBA views, transparent background (white where transparent)
        out_dir/00000/caption.txt
        out_dir/00000/cameras.json           # written last: an object folder with cameras.json is complete

    A second export with the same settings into the same folder (e.g. another ``object_offset``) adds its
    objects to meta.json; different settings raise. Returns the meta.json dict.
    """
    num_objects, num_views, resolution, supersample = int(num_objects), int(num_views), int(resolution), int(supersample)
    lo, hi = (float(v) for v in elevation_range)
    if num_objects < 1 or num_views < 1:
        raise ValueError("num_objects and num_views must be >= 1")
    if resolution < 8 or supersample < 1:
        raise ValueError("resolution must be >= 8 and supersample >= 1")
    if int(object_offset) < 0:
        raise ValueError("object_offset must be >= 0")
    if not -89.0 <= lo <= hi <= 89.0:
        raise ValueError(f"elevation_range must satisfy -89 <= lo <= hi <= 89 degrees, got {(lo, hi)}")
    if not 0 < fov < 180 or not camera_distance > FIT_RADIUS / math.sin(math.radians(fov) / 2):
        raise ValueError(f"the object (radius {FIT_RADIUS}) must fit in the view: camera_distance {camera_distance} is too "
                         f"small for fov {fov}")
    _choose_category(seed, 0, category)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = {
        "synthobjects_version": SYNTHOBJECTS_VERSION, "seed": int(seed), "category": category, "resolution": resolution,
        "supersample": supersample, "num_views": num_views, "elevation_range": [lo, hi],
        "camera_distance": float(camera_distance), "fov": float(fov), "fit_radius": FIT_RADIUS,
    }
    meta_path, objects = out / "meta.json", {}
    if meta_path.is_file():
        old = json.loads(meta_path.read_text())
        if {k: old.get(k) for k in settings} != settings:
            raise ValueError(f"{out} holds a SynthObjects export with other settings ({meta_path}); use another folder")
        objects = {o["object_id"]: o for o in old["objects"]}

    ids = range(int(object_offset), int(object_offset) + num_objects)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        ids = bar = tqdm(ids, desc="SynthObjects", unit="obj")
    files = [f"{v:03d}.png" for v in range(num_views)]
    try:
        for oid in ids:
            params = sample_object(seed, oid, category)
            text = caption(params)
            cams = object_cameras(seed, oid, num_views, (lo, hi), camera_distance, fov)
            folder = out / _object_dirname(oid)
            folder.mkdir(exist_ok=True)
            for f, im in zip(files, render_views(params, cams, resolution, supersample)):
                _save_png(folder / f, im)
            atomic_write_text(folder / "caption.txt", text + "\n")
            with atomic_path(folder / "cameras.json") as tmp:  # written last: its presence marks a complete object
                write_cameras(tmp, files, cams)
            objects[oid] = {"object_id": oid, "dir": folder.name, "category": params.category, "caption": text,
                            "params": params.to_dict()}
    finally:
        if bar is not None:
            bar.close()
    info = {**settings, "objects": [objects[k] for k in sorted(objects)]}
    _atomic_write_json(meta_path, info)
    return info
