"""SynthHeads: a procedural 3D world of cartoon heads with exact EG3D cameras and full ground truth.

Every head is an analytic union of primitives (ellipsoids for skull, face, jaw, chin, nose, ears, neck and
eyeballs; clipped ellipsoid shells for hair and eyelids; planes for glasses and occluders) plus surface
textures (brows, lips/mouth/teeth, nostrils, moles, beards, hair strands, irises). The head sits in the world
frame EG3D uses (y up, face toward +z, centred near the pivot (0, 0, 0.2), inside [-0.5, 0.5]^3) and never
moves: head pose is a *camera* pose, so a camera label is exactly the EG3D 25-value label of the view.

:func:`render` is a pure function of ``(identity, image_params, camera_label)``: it ray-casts every pixel with
EG3D's ray convention (pixel ``(i, j)`` centre ``uv = ((j + 0.5) / R, (i + 0.5) / R)``, camera direction
``((u - cx) / fx, (v - cy) / fy, 1)`` rotated by cam2world and normalized, origin = camera translation), so
the same identity and expression can be re-rendered from any camera. :func:`project_points` is the matching
pinhole projection. :func:`export_dataset` writes EG3D-layout folders (``dataset.json`` labels) per identity.
"""

from __future__ import annotations

import dataclasses
import json
import math
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..utils.io import atomic_path, atomic_write_text

__all__ = [
    "BEARD_STYLES",
    "HAIR_STYLES",
    "SYNTHHEADS_VERSION",
    "IdentityParams",
    "ImageParams",
    "camera_label_from_pose",
    "camera_rays",
    "export_dataset",
    "head_landmarks",
    "project_points",
    "render",
    "render_image",
    "sample_identity",
    "sample_image_params",
]

SYNTHHEADS_VERSION = "1.0"
FFHQ_PIVOT = (0.0, 0.0, 0.2)  # duplicated from my3dgen_hf.eg3d.camera so that rendering workers need no torch
FFHQ_RADIUS = 2.7
FFHQ_FOCAL = 4.2647

HAIR_STYLES = ("short", "medium", "long", "bangs", "bun", "ponytail", "afro", "buzz", "bald")
BEARD_STYLES = ("none", "stubble", "mustache", "goatee", "full")

_HAIR_STYLE_P = (0.17, 0.15, 0.15, 0.10, 0.08, 0.08, 0.07, 0.10, 0.10)
_BEARD_STYLE_P = (0.62, 0.12, 0.09, 0.07, 0.10)

Color = tuple  # (r, g, b) floats in [0, 1]

# --------------------------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IdentityParams:
    """Everything that is fixed for one identity (lengths in world units, colours linear-ish RGB in [0, 1])."""

    identity_id: int
    seed: int
    # head and face proportions
    head_width: float  # skull x radius
    head_height: float  # skull y radius
    head_depth: float  # skull z radius
    forehead: float  # skull centre height (a higher skull = taller forehead)
    cheek_width: float
    jaw_width: float
    jaw_height: float
    chin_width: float
    chin_projection: float
    neck_width: float
    # skin
    skin_color: Color
    blush: float
    moles: tuple  # ((x, y, radius), ...) on the face, world units
    # hair
    hair_style: str
    hair_color: Color
    hair_volume: float
    hairline: float  # front hairline height (unit-shell coordinates)
    hair_part: float  # side-part tilt of the front hairline
    hair_temple: float  # temple recession
    hair_peak: float  # widow's peak depth
    hair_length: float  # for long/ponytail styles
    hair_strand_freq: float
    # eyes
    eye_color: Color
    eye_spacing: float  # half distance between eye centres
    eye_size: float  # eyeball radius
    eye_height: float
    eye_tilt: float  # radians, outer corners up > 0
    iris_size: float  # iris half-angle (radians)
    # nose
    nose_length: float
    nose_width: float
    nose_projection: float
    # mouth
    mouth_width: float  # half width
    mouth_drop: float  # distance from nose tip to mouth line
    lip_color: Color
    upper_lip: float
    lower_lip: float
    # ears
    ear_size: float
    ear_angle: float
    # brows
    brow_thickness: float
    brow_color: Color
    brow_arch: float
    brow_height: float
    brow_length: float
    brow_slant: float
    # extras
    beard_style: str
    glasses: bool
    glasses_color: Color
    glasses_radius: float
    glasses_shape: str  # "round" or "square"

    def to_dict(self) -> dict:
        return _jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict) -> IdentityParams:
        return cls(**{k: _tupleize(v) for k, v in d.items()})


@dataclass(frozen=True)
class ImageParams:
    """Everything that changes per image: expression, camera (head pose), lighting, background, occluder."""

    image_index: int = 0
    split: str = "train"
    # expression
    smile: float = 0.0  # [0, 1]
    eyes_open: float = 1.0  # [0, 1], 0 = closed
    # head pose, implemented as a camera pose around the head (EG3D yaw/pitch offsets from the frontal view)
    yaw: float = 0.0
    pitch: float = 0.0
    # lighting
    light_dir: tuple = (0.3, 0.4, 0.85)  # direction *toward* the light, world frame
    ambient: float = 0.45
    diffuse: float = 0.65
    light_color: Color = (1.0, 1.0, 1.0)
    # background: linear gradient in image space
    bg_color0: Color = (0.75, 0.78, 0.82)
    bg_color1: Color = (0.55, 0.58, 0.65)
    bg_angle: float = 1.5708  # gradient direction in the image plane (radians, 0 = +x/right, pi/2 = down)
    # occluder: a coloured bar or disc floating in front of the face (a plane z = const in the world)
    occluder: bool = False
    occluder_kind: str = "bar"  # "bar" or "disc"
    occluder_center: tuple = (0.0, 0.0, 0.4)
    occluder_size: tuple = (0.2, 0.03)  # bar half length / half width; disc radius in [0]
    occluder_angle: float = 0.0
    occluder_color: Color = (0.2, 0.4, 0.8)

    def to_dict(self) -> dict:
        return _jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict) -> ImageParams:
        return cls(**{k: _tupleize(v) for k, v in d.items()})

    def camera_label(self, focal: float = FFHQ_FOCAL) -> np.ndarray:
        """The EG3D 25-value label (float32) of this image's camera."""
        return camera_label_from_pose(self.yaw, self.pitch, focal=focal)


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.bool_,)):
        return bool(x)
    return x


def _tupleize(x):
    if isinstance(x, list):
        return tuple(_tupleize(v) for v in x)
    return x


def _r(x: float, nd: int = 5) -> float:
    return round(float(x), nd)


def _rc(c) -> Color:
    return tuple(_r(min(max(v, 0.0), 1.0), 4) for v in c)


_SKIN_RAMP = np.array(
    [
        [0.99, 0.87, 0.78],
        [0.95, 0.78, 0.66],
        [0.86, 0.64, 0.50],
        [0.72, 0.50, 0.36],
        [0.55, 0.37, 0.25],
        [0.38, 0.25, 0.17],
    ]
)
_HAIR_PALETTE = {
    "black": (0.06, 0.05, 0.05),
    "dark_brown": (0.22, 0.13, 0.08),
    "brown": (0.42, 0.27, 0.15),
    "auburn": (0.55, 0.22, 0.10),
    "blond": (0.86, 0.72, 0.45),
    "platinum": (0.93, 0.90, 0.80),
    "grey": (0.58, 0.58, 0.58),
    "ginger": (0.80, 0.40, 0.15),
    "blue": (0.20, 0.35, 0.80),
    "pink": (0.92, 0.45, 0.65),
    "green": (0.25, 0.60, 0.35),
    "purple": (0.45, 0.25, 0.65),
}
_HAIR_P = {
    "black": 0.22, "dark_brown": 0.2, "brown": 0.16, "auburn": 0.07, "blond": 0.11, "platinum": 0.04,
    "grey": 0.07, "ginger": 0.05, "blue": 0.02, "pink": 0.02, "green": 0.02, "purple": 0.02,
}
_EYE_PALETTE = (
    (0.30, 0.18, 0.08),  # brown
    (0.15, 0.09, 0.05),  # dark brown
    (0.25, 0.50, 0.85),  # blue
    (0.30, 0.60, 0.35),  # green
    (0.50, 0.40, 0.18),  # hazel
    (0.50, 0.58, 0.65),  # grey
    (0.55, 0.30, 0.70),  # violet (cartoon)
)


def sample_identity(seed: int, identity_id: int) -> IdentityParams:
    """The identity ``identity_id`` of world ``seed`` (a pure function of both)."""
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(identity_id), 0x1D])
    u = rng.uniform

    # skin: a continuous ramp from light to dark with a hue jitter
    st = u(0, 1) * (len(_SKIN_RAMP) - 1)
    k = min(int(st), len(_SKIN_RAMP) - 2)
    skin = _SKIN_RAMP[k] * (1 - (st - k)) + _SKIN_RAMP[k + 1] * (st - k)
    skin = skin * (1 + rng.normal(0, 0.03, 3)) + rng.normal(0, 0.015)

    names = list(_HAIR_P)
    p = np.array([_HAIR_P[n] for n in names])
    hair_name = names[rng.choice(len(names), p=p / p.sum())]
    hair = np.array(_HAIR_PALETTE[hair_name]) * (1 + rng.normal(0, 0.08, 3))
    style = HAIR_STYLES[rng.choice(len(HAIR_STYLES), p=_HAIR_STYLE_P)]
    if hair_name in ("grey", "platinum") and rng.uniform() < 0.5 and style not in ("afro",):
        style = style if style in ("bald", "buzz", "short") else "short"

    volume = {
        "short": u(0.018, 0.035), "medium": u(0.03, 0.05), "long": u(0.03, 0.05), "bangs": u(0.03, 0.05),
        "bun": u(0.012, 0.022), "ponytail": u(0.012, 0.022), "afro": u(0.045, 0.065), "buzz": u(0.004, 0.008),
        "bald": u(0.006, 0.012),
    }[style]
    hairline = {
        "short": u(0.30, 0.52), "medium": u(0.28, 0.45), "long": u(0.28, 0.45), "bangs": u(0.0, 0.12),
        "bun": u(0.3, 0.45), "ponytail": u(0.3, 0.45), "afro": u(0.3, 0.45), "buzz": u(0.35, 0.55),
        "bald": 1.5,
    }[style]

    eye_sel = rng.choice(len(_EYE_PALETTE))
    eye = np.array(_EYE_PALETTE[eye_sel]) * (1 + rng.normal(0, 0.08, 3))

    lip = skin * np.array([0.85, 0.55, 0.55]) + np.array([0.08, 0.0, 0.02]) + rng.normal(0, 0.03, 3)
    if rng.uniform() < 0.2:  # lipstick
        lip = np.array([u(0.55, 0.85), u(0.05, 0.2), u(0.1, 0.35)])
    brow = hair * u(0.55, 0.9) if hair_name not in ("blue", "pink", "green", "purple") else hair * 0.5
    if hair_name in ("platinum", "grey") and rng.uniform() < 0.5:
        brow = np.array([0.35, 0.3, 0.28]) * u(0.6, 1.2)

    beard = BEARD_STYLES[rng.choice(len(BEARD_STYLES), p=_BEARD_STYLE_P)]
    glasses = bool(rng.uniform() < 0.2)
    glasses_color = (
        np.array([0.05, 0.05, 0.05]) if rng.uniform() < 0.5 else rng.uniform(0.05, 0.9, 3)
    )

    head_width = u(0.165, 0.198)
    moles = []
    for _ in range(int(rng.choice([0, 0, 1, 1, 2, 3]))):
        side = rng.choice([-1.0, 1.0])
        moles.append((_r(side * u(0.02, 0.1)), _r(u(-0.2, 0.12)), _r(u(0.0035, 0.007))))

    return IdentityParams(
        identity_id=int(identity_id),
        seed=int(seed),
        head_width=_r(head_width),
        head_height=_r(u(0.2, 0.235)),
        head_depth=_r(u(0.2, 0.235)),
        forehead=_r(u(0.035, 0.075)),
        cheek_width=_r(u(0.8, 0.92) * head_width),
        jaw_width=_r(u(0.6, 0.88) * head_width),
        jaw_height=_r(u(0.18, 0.22)),
        chin_width=_r(u(0.035, 0.07)),
        chin_projection=_r(u(0.0, 0.03)),
        neck_width=_r(u(0.075, 0.105)),
        skin_color=_rc(skin),
        blush=_r(u(0.0, 0.35)),
        moles=tuple(moles),
        hair_style=style,
        hair_color=_rc(hair),
        hair_volume=_r(volume),
        hairline=_r(hairline),
        hair_part=_r(rng.choice([-1, 0, 1]) * u(0.05, 0.3)),
        hair_temple=_r(u(0.0, 0.35)),
        hair_peak=_r(u(0.0, 0.15) if rng.uniform() < 0.4 else 0.0),
        hair_length=_r(u(0.75, 1.25)),
        hair_strand_freq=_r(u(25, 60)),
        eye_color=_rc(eye),
        eye_spacing=_r(u(0.052, 0.074)),
        eye_size=_r(u(0.021, 0.029)),
        eye_height=_r(u(0.0, 0.04)),
        eye_tilt=_r(u(-0.15, 0.2)),
        iris_size=_r(u(0.5, 0.72)),
        nose_length=_r(u(0.065, 0.105)),
        nose_width=_r(u(0.018, 0.032)),
        nose_projection=_r(u(0.025, 0.055)),
        mouth_width=_r(u(0.034, 0.056)),
        mouth_drop=_r(u(0.038, 0.058)),
        lip_color=_rc(lip),
        upper_lip=_r(u(0.005, 0.011)),
        lower_lip=_r(u(0.007, 0.015)),
        ear_size=_r(u(0.8, 1.25)),
        ear_angle=_r(u(0.1, 0.55)),
        brow_thickness=_r(u(0.005, 0.013)),
        brow_color=_rc(brow),
        brow_arch=_r(u(0.0, 0.012)),
        brow_height=_r(u(0.042, 0.062)),
        brow_length=_r(u(0.026, 0.04)),
        brow_slant=_r(u(-0.15, 0.2)),
        beard_style=beard,
        glasses=glasses,
        glasses_color=_rc(glasses_color),
        glasses_radius=_r(u(0.032, 0.044)),
        glasses_shape=("round", "square")[int(rng.uniform() < 0.5)],
    )


_SPLIT_CODE = {"train": 0, "test": 1}


def sample_image_params(
    seed: int,
    identity_id: int,
    image_index: int,
    split: str = "train",
    yaw_range: float | Sequence[float] = 0.6,
    pitch_range: float | Sequence[float] = 0.35,
    occluder_prob: float = 0.1,
    closed_eyes_prob: float = 0.15,
) -> ImageParams:
    """The per-image parameters of image ``image_index`` (of ``split``) of identity ``identity_id``.

    ``yaw_range``/``pitch_range`` are either a half range (uniform in [-r, r]) or a (lo, hi) pair.
    """
    code = _SPLIT_CODE.get(split, zlib.crc32(split.encode()) % 100000 + 2)
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(identity_id), int(image_index), code, 0x1A])
    u = rng.uniform

    def rng_range(r):
        if isinstance(r, (tuple, list)):
            return float(r[0]), float(r[1])
        return -float(r), float(r)

    ylo, yhi = rng_range(yaw_range)
    plo, phi_ = rng_range(pitch_range)
    yaw = u(ylo, yhi)
    pitch = u(plo, phi_)

    smile = u(0, 1) if rng.uniform() < 0.7 else float(rng.choice([0.0, 1.0]))
    eyes_open = u(0.0, 0.9) if rng.uniform() < closed_eyes_prob else u(0.9, 1.0)
    if eyes_open < 0.25:
        eyes_open = 0.0 if rng.uniform() < 0.5 else eyes_open

    # light from the front hemisphere (toward the light), mostly from above
    az = u(-1.2, 1.2)
    el = u(-0.3, 1.0)
    light = (math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az))
    tint = np.array([1.0, 1.0, 1.0]) + rng.normal(0, 0.06, 3)
    tint = tint / tint.max()

    base = rng.uniform(0.15, 0.95, 3)
    if rng.uniform() < 0.4:
        base = np.full(3, u(0.2, 0.95)) + rng.normal(0, 0.03, 3)
    bg1 = base * u(0.6, 1.0) + rng.normal(0, 0.05, 3)

    occ = bool(rng.uniform() < occluder_prob)
    kind = "bar" if rng.uniform() < 0.6 else "disc"
    if kind == "bar":
        size = (u(0.12, 0.3), u(0.015, 0.04))
    else:
        size = (u(0.05, 0.1), 0.0)
    center = (u(-0.09, 0.09), u(-0.14, 0.08), u(0.3, 0.42))

    return ImageParams(
        image_index=int(image_index),
        split=str(split),
        smile=_r(smile),
        eyes_open=_r(eyes_open),
        yaw=_r(yaw, 6),
        pitch=_r(pitch, 6),
        light_dir=tuple(_r(v) for v in light),
        ambient=_r(u(0.35, 0.55)),
        diffuse=_r(u(0.45, 0.8)),
        light_color=_rc(tint),
        bg_color0=_rc(base),
        bg_color1=_rc(bg1),
        bg_angle=_r(u(0, 2 * math.pi)),
        occluder=occ,
        occluder_kind=kind,
        occluder_center=tuple(_r(v) for v in center),
        occluder_size=tuple(_r(v) for v in size),
        occluder_angle=_r(u(0, math.pi)),
        occluder_color=_rc(rng.uniform(0.05, 0.95, 3)),
    )


# --------------------------------------------------------------------------------------------------------------
# Cameras
# --------------------------------------------------------------------------------------------------------------


def camera_label_from_pose(
    yaw: float, pitch: float, focal: float = FFHQ_FOCAL, radius: float = FFHQ_RADIUS, lookat=FFHQ_PIVOT
) -> np.ndarray:
    """EG3D label [25] (float32) for a yaw/pitch offset from the frontal view, via
    :func:`my3dgen_hf.eg3d.camera.sample_camera_label` (the exact library convention)."""
    from my3dgen_hf.eg3d.camera import sample_camera_label

    return sample_camera_label(float(yaw), float(pitch), radius=radius, lookat=lookat, focal=focal)[0].numpy()


def _split_label(c) -> tuple[np.ndarray, np.ndarray]:
    if hasattr(c, "detach"):
        c = c.detach().cpu().numpy()
    c = np.asarray(c, dtype=np.float64).reshape(-1)
    if c.size != 25:
        raise ValueError(f"a camera label has 25 values, got {c.size}")
    return c[:16].reshape(4, 4), c[16:25].reshape(3, 3)


def _ray_dirs(c, res: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """EG3D RaySampler for one camera: origin [3] (float64) and unit directions as three [res, res] float32 maps
    (row i, column j)."""
    c2w, K = _split_label(c)
    fx, fy, cx, cy, sk = K[0, 0], K[1, 1], K[0, 2], K[1, 2], K[0, 1]
    g = (np.arange(res, dtype=np.float64) + 0.5) / res
    u = g[None, :]  # x / column
    v = g[:, None]  # y / row
    x_lift = (u - cx + cy * sk / fy - sk * v / fy) / fx
    y_lift = np.broadcast_to((v - cy) / fy, (res, res))
    x_lift = np.broadcast_to(x_lift, (res, res))
    R = c2w[:3, :3]
    d = [R[k, 0] * x_lift + R[k, 1] * y_lift + R[k, 2] for k in range(3)]
    n = np.sqrt(d[0] ** 2 + d[1] ** 2 + d[2] ** 2)
    return c2w[:3, 3].copy(), *(np.ascontiguousarray(di / n, dtype=np.float32) for di in d)


def camera_rays(c, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """Ray origins and unit directions [resolution**2, 3] (float32) exactly as EG3D's ``RaySampler`` orders them
    (row-major over pixel rows i, then columns j)."""
    o, dx, dy, dz = _ray_dirs(c, resolution)
    dirs = np.stack([dx.reshape(-1), dy.reshape(-1), dz.reshape(-1)], axis=-1)
    return np.broadcast_to(o.astype(np.float32), dirs.shape).copy(), dirs


def project_points(points, c, resolution: int, return_depth: bool = False):
    """Project world points [N, 3] into the image of camera label ``c`` at ``resolution``.

    Returns pixel coordinates [N, 2] as (x = column, y = row) in *array-index* units: the centre of pixel (i, j)
    is (j, i), i.e. ``x = u * resolution - 0.5`` for the normalized coordinate ``u`` of EG3D's ray sampler.
    With ``return_depth`` also returns the camera-space z [N] (distance along the optical axis).
    """
    c2w, K = _split_label(c)
    P = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    R, t = c2w[:3, :3], c2w[:3, 3]
    pc = (P - t) @ R  # world -> camera (R orthonormal)
    z = pc[:, 2]
    x, y = pc[:, 0] / z, pc[:, 1] / z
    u = K[0, 0] * x + K[0, 1] * y + K[0, 2]
    v = K[1, 1] * y + K[1, 2]
    xy = np.stack([u * resolution - 0.5, v * resolution - 0.5], axis=-1)
    return (xy, z) if return_depth else xy


# --------------------------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------------------------


def _rot_x(a):
    c, s = math.cos(a), math.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _rot_y(a):
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _rot_z(a):
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


class _Layout:
    """Derived geometry of one identity (world units)."""

    def __init__(self, p: IdentityParams):
        self.p = p
        self.skull_c = np.array([0.0, p.forehead, -0.03])
        self.skull_r = np.array([p.head_width, p.head_height, p.head_depth])
        # the face: one egg-like ellipsoid from the brows to the chin, a jaw for square faces, a chin
        self.cheek_c = np.array([0.0, -0.055, 0.02])
        self.cheek_r = np.array([p.cheek_width, p.jaw_height, 0.175])
        self.jaw_c = np.array([0.0, -0.055 - 0.45 * p.jaw_height, -0.025])
        self.jaw_r = np.array([p.jaw_width, 0.42 * p.jaw_height, 0.14])
        chin_y = self.cheek_c[1] - p.jaw_height + 0.045
        jaw_front = self.cheek_c[2] + self.cheek_r[2] * math.sqrt(
            max(0.0, 1 - ((chin_y - self.cheek_c[1]) / self.cheek_r[1]) ** 2)
        )
        self.chin_r = np.array([p.chin_width, 0.05, 0.06])
        self.chin_c = np.array([0.0, chin_y, jaw_front - 0.04 + 0.7 * p.chin_projection])
        self.skin_ellipsoids = [
            (self.skull_c, self.skull_r),
            (self.cheek_c, self.cheek_r),
            (self.jaw_c, self.jaw_r),
            (self.chin_c, self.chin_r),
        ]
        # eyes
        self.eye_y = p.eye_height
        zf = self.front_z(p.eye_spacing, self.eye_y)
        self.eye_r = p.eye_size
        self.eye_c = [np.array([s * p.eye_spacing, self.eye_y, zf - 0.5 * p.eye_size]) for s in (-1.0, 1.0)]
        # nose
        self.nose_tip_y = self.eye_y - p.nose_length
        y_mid = self.eye_y - 0.5 * p.nose_length
        self.nose_bridge_c = np.array([0.0, y_mid, self.front_z(0.0, y_mid) - 0.006 + 0.35 * p.nose_projection])
        self.nose_bridge_r = np.array([0.45 * p.nose_width, 0.56 * p.nose_length, 0.5 * p.nose_projection + 0.008])
        self.nose_bridge_rot = _rot_x(-0.35)
        tip_zf = self.front_z(0.0, self.nose_tip_y)
        self.nose_tip_c = np.array([0.0, self.nose_tip_y + 0.006, tip_zf + 0.55 * p.nose_projection])
        self.nose_tip_r = np.array([p.nose_width * 0.8, p.nose_width * 0.72, p.nose_width * 0.8])
        self.ala_c = [
            np.array([s * p.nose_width * 0.85, self.nose_tip_y + 0.004, tip_zf + 0.35 * p.nose_projection - 0.004])
            for s in (-1.0, 1.0)
        ]
        self.ala_r = np.array([0.55 * p.nose_width, 0.5 * p.nose_width, 0.6 * p.nose_width])
        # mouth (a surface texture on the lower face)
        self.mouth_y = self.nose_tip_y - p.mouth_drop
        # ears
        ear_y = self.eye_y - 0.025
        self.ear_r = np.array([0.016, 0.06 * p.ear_size, 0.036 * p.ear_size])
        self.ear_c = [
            np.array([s * (self.half_width_at(ear_y, -0.04) + 0.004), ear_y, -0.04]) for s in (-1.0, 1.0)
        ]
        self.ear_rot = [_rot_y(-s * p.ear_angle) @ _rot_z(s * 0.12) for s in (-1.0, 1.0)]
        # neck
        self.neck_c = np.array([0.0, -0.295, -0.035])
        self.neck_r = np.array([p.neck_width, 0.2, p.neck_width * 1.05])  # ends at y = -0.495 (inside the box)
        # hair shell
        v = p.hair_volume
        self.hair_c = self.skull_c + np.array([0.0, 0.5 * v, -0.25 * v])
        self.hair_r = self.skull_r + np.array([v, 1.25 * v, v])
        # thick hair gets a thinner inner layer whose hairline sits lower: the cut edge then tapers in steps
        self.hair_layers = [(self.hair_c, self.hair_r, 0.0)]
        if v > 0.025:
            lift = 0.12 if v > 0.055 else 0.07
            vi = 0.4 * v
            self.hair_layers = [
                (self.hair_c, self.hair_r, lift),
                (self.skull_c + np.array([0.0, 0.5 * vi, -0.25 * vi]), self.skull_r + np.array([vi, 1.25 * vi, vi]), 0.0),
            ]
        # glasses plane just in front of the eyes
        self.glasses_z = max(self.eye_c[0][2] + self.eye_r + 0.018, self.front_z(0.0, self.eye_y) + 0.012)

    def front_z(self, x: float, y: float) -> float:
        """z of the frontmost skin surface (skull/cheeks/jaw/chin) at (x, y)."""
        best = -1.0
        for c, r in self.skin_ellipsoids:
            s = 1 - ((x - c[0]) / r[0]) ** 2 - ((y - c[1]) / r[1]) ** 2
            if s > 0:
                best = max(best, c[2] + r[2] * math.sqrt(s))
        return best

    def half_width_at(self, y: float, z: float) -> float:
        best = 0.0
        for c, r in self.skin_ellipsoids:
            s = 1 - ((y - c[1]) / r[1]) ** 2 - ((z - c[2]) / r[2]) ** 2
            if s > 0:
                best = max(best, r[0] * math.sqrt(s))
        return best


def head_landmarks(identity: IdentityParams) -> dict[str, np.ndarray]:
    """Ground-truth 3D landmarks (world frame) of an identity's neutral face."""
    L = _Layout(identity)
    p = identity
    mw = p.mouth_width
    out = {
        "eye_right": L.eye_c[0] + np.array([0, 0, L.eye_r]),  # the subject's right eye is at -x
        "eye_left": L.eye_c[1] + np.array([0, 0, L.eye_r]),
        "nose_tip": L.nose_tip_c + np.array([0, 0, L.nose_tip_r[2]]),
        "mouth_center": np.array([0.0, L.mouth_y, L.front_z(0.0, L.mouth_y)]),
        "mouth_right": np.array([-mw, L.mouth_y, L.front_z(-mw, L.mouth_y)]),
        "mouth_left": np.array([mw, L.mouth_y, L.front_z(mw, L.mouth_y)]),
        "chin": L.chin_c + np.array([0, -0.6 * L.chin_r[1], 0.8 * L.chin_r[2]]),
        "ear_right": L.ear_c[0] - np.array([L.ear_r[0], 0, 0]),
        "ear_left": L.ear_c[1] + np.array([L.ear_r[0], 0, 0]),
    }
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}


def _smoothstep(e0, e1, x):
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


class _Prim:
    """An ellipsoid (optionally rotated; optionally a shell clipped by ``cover``) or a bounded plane."""

    def __init__(
        self,
        name: str,
        material: str,
        center=None,
        radii=None,
        rot=None,
        cover: Callable | None = None,
        plane: tuple | None = None,
        region: Callable | None = None,
        bound: np.ndarray | None = None,
    ):
        self.name = name
        self.material = material
        self.cover = cover
        # planes: (p0, e_a, e_b): origin and two orthonormal in-plane axes; region(a, b) -> bool on the in-plane
        # coordinates a = (P - p0).e_a, b = (P - p0).e_b
        self.plane = None
        self.region = region
        if plane is not None:
            p0, ea, eb = (np.asarray(v, dtype=np.float64) for v in plane)
            n = np.cross(ea, eb)
            self.plane = (p0, ea, eb, n / np.linalg.norm(n))
        if plane is None:
            self.c = np.asarray(center, dtype=np.float64)
            self.r = np.asarray(radii, dtype=np.float64)
            self.rot = None if rot is None else np.asarray(rot, dtype=np.float64)
            ext = self.r if self.rot is None else np.abs(self.rot) @ self.r
            self.bound = np.stack([self.c - ext, self.c + ext])
        else:
            self.bound = np.asarray(bound, dtype=np.float64)

    # local coordinates (unit sphere) of ray points
    def _local_dirs(self, dx, dy, dz):
        r = self.r
        if self.rot is None:
            return dx * np.float32(1 / r[0]), dy * np.float32(1 / r[1]), dz * np.float32(1 / r[2])
        R = self.rot.astype(np.float32)
        s = (1 / r).astype(np.float32)
        return (
            (R[0, 0] * dx + R[1, 0] * dy + R[2, 0] * dz) * s[0],
            (R[0, 1] * dx + R[1, 1] * dy + R[2, 1] * dz) * s[1],
            (R[0, 2] * dx + R[1, 2] * dy + R[2, 2] * dz) * s[2],
        )

    def _local_origin(self, o):
        v = o - self.c
        if self.rot is not None:
            v = self.rot.T @ v
        return v / self.r

    def intersect(self, o, dx, dy, dz):
        """(t, back) for ray slices: t = inf where missed; back = True where the far (inner) side was hit."""
        if self.plane is not None:
            p0, ea, eb, n = self.plane
            rel = o - p0
            denom = n[0] * dx + n[1] * dy + n[2] * dz
            with np.errstate(divide="ignore", invalid="ignore"):
                t = (np.float32(-(n @ rel)) / denom).astype(np.float32)
            pa = np.float32(ea @ rel) + t * (ea[0] * dx + ea[1] * dy + ea[2] * dz)
            pb = np.float32(eb @ rel) + t * (eb[0] * dx + eb[1] * dy + eb[2] * dz)
            ok = (t > 0) & self.region(pa, pb)
            return np.where(ok, t, np.float32(np.inf)), None
        ol = self._local_origin(o).astype(np.float32)
        lx, ly, lz = self._local_dirs(dx, dy, dz)
        a = lx * lx + ly * ly + lz * lz
        b = ol[0] * lx + ol[1] * ly + ol[2] * lz
        cc = np.float32(ol @ ol - 1.0)
        disc = b * b - a * cc
        hit = disc > 0
        sq = np.sqrt(np.maximum(disc, 0))
        inv_a = 1.0 / a
        t0 = (-b - sq) * inv_a
        if self.cover is None:
            return np.where(hit, t0, np.float32(np.inf)), None
        ok0 = hit & self.cover(ol[0] + t0 * lx, ol[1] + t0 * ly, ol[2] + t0 * lz)
        t1 = (-b + sq) * inv_a
        ok1 = hit & ~ok0 & self.cover(ol[0] + t1 * lx, ol[1] + t1 * ly, ol[2] + t1 * lz)
        t = np.where(ok0, t0, np.where(ok1, t1, np.float32(np.inf)))
        return t, ok1

    def local(self, Pt):
        """Unit-sphere coordinates [3, n] of world points [3, n] (component-major)."""
        v = Pt - self.c.astype(np.float32)[:, None]
        if self.rot is not None:
            v = self.rot.T.astype(np.float32) @ v
        return v * (1 / self.r).astype(np.float32)[:, None]

    def normal(self, qt):
        """Unit world normals [3, n] at unit-sphere coordinates [3, n]."""
        if self.plane is not None:
            return np.broadcast_to(self.plane[3].astype(np.float32)[:, None], qt.shape).copy()
        g = qt * (1 / self.r).astype(np.float32)[:, None]
        if self.rot is not None:
            g = self.rot.astype(np.float32) @ g
        return g * (1 / np.sqrt(g[0] * g[0] + g[1] * g[1] + g[2] * g[2]))[None, :]


def _hair_cover(p: IdentityParams, lift: float = 0.0):
    style = p.hair_style
    if style == "bald":

        def cover(qx, qy, qz):
            return (qy < 0.05) & (qy > -0.5) & (qz < -0.05 - 0.5 * qy)

        return cover
    fy, part, temple, peak = p.hairline + lift, p.hair_part, p.hair_temple, p.hair_peak
    nape = {"short": -0.5, "buzz": -0.5, "afro": -0.45, "bun": -0.55, "ponytail": -0.55}.get(style, -0.75)
    zb, zf = (-0.45, 0.35) if style in ("short", "buzz", "bun", "ponytail", "afro") else (-0.1, 0.55)

    def cover(qx, qy, qz):
        w = _smoothstep(zb, zf, qz)
        front = fy + temple * qx * qx - peak * np.exp(-((qx / 0.22) ** 2)) + part * qx
        return qy > nape * (1 - w) + front * w

    return cover


def _build_scene(p: IdentityParams, ip: ImageParams, L: _Layout | None = None) -> list[_Prim]:
    L = L or _Layout(p)
    prims: list[_Prim] = []
    add = prims.append
    add(_Prim("skull", "skin", L.skull_c, L.skull_r))
    add(_Prim("face", "skin", L.cheek_c, L.cheek_r))
    add(_Prim("jaw", "skin", L.jaw_c, L.jaw_r))
    add(_Prim("chin", "skin", L.chin_c, L.chin_r))
    add(_Prim("neck", "skin", L.neck_c, L.neck_r))
    add(_Prim("nose_bridge", "skin", L.nose_bridge_c, L.nose_bridge_r, L.nose_bridge_rot))
    add(_Prim("nose_tip", "nose_tip", L.nose_tip_c, L.nose_tip_r))
    for k in range(2):
        add(_Prim(f"ala{k}", "skin", L.ala_c[k], L.ala_r))
        add(_Prim(f"ear{k}", "ear", L.ear_c[k], L.ear_r, L.ear_rot[k]))
    # eyes and lids (the lid shell rotated by the eye tilt so the lid line slants)
    e = float(np.clip(ip.eyes_open, 0.0, 1.0))
    yu = -0.12 + 0.74 * e
    yl = -0.08 - 0.64 * e

    def lid_cover(qx, qy, qz):
        return ((qy > yu) | (qy < yl)) & (qz > -0.3)

    for k, s in enumerate((-1.0, 1.0)):
        add(_Prim(f"eye{k}", "eye", L.eye_c[k], np.full(3, L.eye_r)))
        add(_Prim(f"lid{k}", "lid", L.eye_c[k], np.full(3, L.eye_r * 1.09), _rot_z(-s * p.eye_tilt), lid_cover))
    # hair
    for k, (hc, hr, lift) in enumerate(L.hair_layers):
        add(_Prim(f"hair{k}" if k else "hair", "hair", hc, hr, None, _hair_cover(p, lift)))
    if p.hair_style == "long":
        hl = p.hair_length
        c = np.array([0.0, L.skull_c[1] - 0.13 * hl, L.skull_c[2] - 0.035])
        r = np.array([L.hair_r[0] + 0.01, 0.27 * hl, L.hair_r[2] * 0.88])
        zc = (L.cheek_c[2] - 0.01 - c[2]) / r[2]
        add(_Prim("hair_long", "hair", c, r, None, lambda qx, qy, qz: qz < zc))
    elif p.hair_style == "bun":
        c = L.skull_c + np.array([0.0, 0.8 * L.skull_r[1], -0.55 * L.skull_r[2]])
        add(_Prim("hair_bun", "hair", c, np.full(3, 0.065)))
    elif p.hair_style == "ponytail":
        hl = p.hair_length
        c = L.skull_c + np.array([0.0, -0.06 - 0.05 * hl, -L.skull_r[2] - 0.02])
        add(_Prim("hair_tail", "hair", c, np.array([0.045, 0.13 * hl, 0.04]), _rot_x(-0.5)))
    # glasses: two rims in the plane z = zg and two temple arms in the planes x = +-xa
    if p.glasses:
        zg = L.glasses_z
        gr = p.glasses_radius
        cx0 = p.eye_spacing
        cy0 = L.eye_y
        th = 0.0045
        square = p.glasses_shape == "square"

        def rims(x, y):
            ax = np.abs(np.abs(x) - cx0)
            ay = np.abs(y - cy0)
            if square:
                d = np.maximum(ax / 1.15, ay / 0.85)
            else:
                d = np.sqrt((ax / 1.1) ** 2 + (ay / 0.9) ** 2)
            rim = (d < gr) & (d > gr - th)
            bridge = (np.abs(x) < cx0 - gr * 0.9) & (np.abs(y - cy0 - 0.25 * gr) < 0.5 * th)
            return rim | bridge

        xa = cx0 + 1.1 * gr  # hinges at the outer rims, then arms straight back to the ears

        def rims_and_hinges(x, y, _rims=rims):
            ax = np.abs(x)
            hinge = (ax > cx0 + 0.9 * gr) & (ax < xa) & (np.abs(y - cy0 - 0.2 * gr) < 0.55 * th)
            return _rims(x, y) | hinge

        add(
            _Prim(
                "glasses",
                "frame",
                plane=((0.0, 0.0, zg), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
                region=rims_and_hinges,
                bound=np.array([[-xa, cy0 - gr, zg - 1e-3], [xa, cy0 + gr, zg + 1e-3]]),
            )
        )
        z_ear = L.ear_c[0][2] + 0.01
        x_ear = L.half_width_at(cy0, z_ear) + 0.006
        ya = cy0 + 0.2 * gr
        for k, s in enumerate((-1.0, 1.0)):
            H = np.array([s * xa, ya, zg])
            E = np.array([s * x_ear, ya, z_ear])
            length = float(np.linalg.norm(E - H))
            ea = (E - H) / length

            def arm(a, b, _len=length):
                return (np.abs(b) < 0.55 * th) & (a > 0) & (a < _len)

            lo = np.minimum(H, E) - np.array([1e-3, th, 1e-3])
            hi = np.maximum(H, E) + np.array([1e-3, th, 1e-3])
            add(_Prim(f"glasses_arm{k}", "frame", plane=(H, ea, (0.0, 1.0, 0.0)), region=arm, bound=np.stack([lo, hi])))
    if ip.occluder:
        ox, oy, oz = ip.occluder_center
        ca, sa = math.cos(ip.occluder_angle), math.sin(ip.occluder_angle)
        if ip.occluder_kind == "disc":
            rad = ip.occluder_size[0]

            def occ(x, y):
                return (x - ox) ** 2 + (y - oy) ** 2 < rad * rad

            ext = rad
        else:
            hl_, hw_ = ip.occluder_size

            def occ(x, y):
                a = (x - ox) * ca + (y - oy) * sa
                b = -(x - ox) * sa + (y - oy) * ca
                return (np.abs(a) < hl_) & (np.abs(b) < hw_)

            ext = math.hypot(hl_, hw_)
        add(
            _Prim(
                "occluder",
                "occluder",
                plane=((0.0, 0.0, oz), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
                region=occ,
                bound=np.array([[ox - ext, oy - ext, oz - 1e-3], [ox + ext, oy + ext, oz + 1e-3]]),
            )
        )
    return prims


# --------------------------------------------------------------------------------------------------------------
# Materials
# --------------------------------------------------------------------------------------------------------------


def _f32(c):
    return np.asarray(c, dtype=np.float32)


def _band(x, lo, hi, soft):
    """Soft indicator of lo < x < hi."""
    return np.clip((x - lo) / soft, 0, 1) * np.clip((hi - x) / soft, 0, 1)


def _skin_albedo(P, p: IdentityParams, ip: ImageParams, L: _Layout, features: bool = True):
    n = P.shape[0]
    skin = _f32(p.skin_color)
    col = np.broadcast_to(skin, (n, 3)).copy()
    if not features or n == 0:
        return col
    x, y, z = P[:, 0], P[:, 1], P[:, 2]
    front = z > 0.06
    ax = np.abs(x)
    # blush on the cheeks
    if p.blush > 0:
        bc = np.exp(-(((ax - p.eye_spacing - 0.01) / 0.035) ** 2 + ((y - L.eye_y + 0.065) / 0.028) ** 2))
        w = (p.blush * bc * front)[:, None]
        col = col * (1 - w) + w * _f32((0.9, 0.45, 0.45)) * col * 1.3
    # moles
    for mx, my_, mr in p.moles:
        d2 = (x - mx) ** 2 + (y - my_) ** 2
        w = (np.clip((mr * mr - d2) / (mr * mr * 0.4), 0, 1) * front)[:, None]
        col = col * (1 - w) + w * skin * _f32((0.35, 0.25, 0.22))
    # beard
    hair = _f32(p.hair_color)
    my = L.mouth_y
    mw = p.mouth_width
    if p.beard_style != "none":
        chin_bottom = L.chin_c[1] - L.chin_r[1] - 0.015
        if p.beard_style in ("stubble", "full"):
            top = np.minimum(my + 0.02 + 0.5 * np.maximum(ax - mw, 0), L.nose_tip_y - 0.012)
            soft = 0.02 if p.beard_style == "stubble" else 0.008
            lower = _band(y, chin_bottom, top, soft) * np.clip((z - 0.04) / 0.04, 0, 1)
            amt = 0.3 if p.beard_style == "stubble" else 0.92
            w = (amt * lower)[:, None]
        elif p.beard_style == "mustache":
            w = (0.92 * _band(y, my + 0.004, my + p.upper_lip + 0.02, 0.003) * (ax < mw * 1.15) * front)[:, None]
        else:  # goatee
            g = _band(y, chin_bottom + 0.01, my - p.lower_lip, 0.004) * (ax < mw * 0.75)
            m = _band(y, my + 0.004, my + p.upper_lip + 0.018, 0.003) * (ax < mw * 1.1)
            w = (0.9 * np.maximum(g, m) * front)[:, None]
        if p.beard_style in ("full", "goatee", "mustache"):
            w = w * (0.85 + 0.15 * np.sin(x * 900.0 + y * 300.0)[:, None])
        col = col * (1 - w) + w * hair
    # brows: a slanted arch above each eye
    bl = p.brow_length
    bx = (ax - p.eye_spacing) / bl  # -1 (inner end) .. 1 (outer end)
    yc = L.eye_y + p.brow_height + p.brow_arch * (1 - bx * bx) - p.brow_slant * 0.02 * bx
    th = p.brow_thickness * (1.15 - 0.45 * np.clip(bx, -1, 1)) * 0.5
    wb = _band(bx, -1.0, 1.0, 0.15) * _band(y, yc - th, yc + th, 0.002) * front
    col = col * (1 - wb[:, None]) + wb[:, None] * _f32(p.brow_color)
    # mouth: lips around a curve that bends up with the smile; teeth show when the smile is wide
    s = float(np.clip(ip.smile, 0, 1))
    mwe = mw * (1 + 0.18 * s)
    xn = x / mwe
    inside = np.clip(1 - xn * xn, 0, None)
    curve = my + (0.022 * s - 0.004) * mwe / 0.045 * xn * xn - 0.004 * s
    openh = max(0.0, s - 0.3) * 0.022 * np.sqrt(inside)
    upper_top = curve + openh * 0.5 + p.upper_lip * np.sqrt(inside) * (1 - 0.25 * s) * (
        1 - 0.25 * np.exp(-((x / (0.25 * mwe)) ** 2))
    )
    lower_bot = curve - openh - p.lower_lip * np.sqrt(inside) * (1 - 0.2 * s)
    mouth_zone = (ax < mwe) & front & (y > lower_bot - 0.004) & (y < upper_top + 0.004)
    if mouth_zone.any():
        idx = np.nonzero(mouth_zone)[0]
        yy, cu, oh = y[idx], curve[idx], openh[idx]
        lips = _band(yy, lower_bot[idx], upper_top[idx], 0.0012)
        w = lips[:, None]
        sub = col[idx] * (1 - w) + w * _f32(p.lip_color)
        # mouth opening: dark cavity with a row of teeth on top
        cav = _band(yy, cu - oh, cu + 0.5 * oh, 0.0008) * (oh > 1e-4)
        teeth = cav * (yy > cu - 0.35 * oh)
        cav_col = _f32((0.25, 0.06, 0.06))
        sub = sub * (1 - cav[:, None]) + cav[:, None] * cav_col
        sub = sub * (1 - teeth[:, None]) + teeth[:, None] * _f32((0.95, 0.94, 0.9))
        # the mouth line
        line = np.exp(-(((yy - cu) / 0.0015) ** 2)) * (oh <= 1e-4) * np.sqrt(inside[idx])
        sub = sub * (1 - 0.6 * line[:, None])
        col[idx] = sub
    return col


def _albedo(prim: _Prim, P, q, back, p: IdentityParams, ip: ImageParams, L: _Layout):
    m = prim.material
    n = P.shape[0]
    if m == "skin":
        col = _skin_albedo(P, p, ip, L, features=prim.name not in ("neck",))
        if prim.name == "neck":
            col = col * np.float32(0.82)
        return col
    if m == "nose_tip":
        col = _skin_albedo(P, p, ip, L)
        qx, qy, qz = q[:, 0], q[:, 1], q[:, 2]
        nos = ((np.abs(qx) - 0.4) / 0.26) ** 2 + ((qy + 0.85) / 0.28) ** 2 + ((qz - 0.05) / 0.6) ** 2 < 1
        return np.where(nos[:, None], col * np.float32(0.35), col)
    if m == "ear":
        col = np.broadcast_to(_f32(p.skin_color), (n, 3)).copy()
        qx, qy, qz = q[:, 0], q[:, 1], q[:, 2]
        outward = qx * np.sign(prim.c[0]) > 0.3
        inner = outward & ((qy / 0.75) ** 2 + (qz / 0.6) ** 2 < 1) & ~((qy / 0.45) ** 2 + (qz / 0.32) ** 2 < 0.25)
        return np.where(inner[:, None], col * np.float32(0.78), col)
    if m == "eye":
        qz = q[:, 2]
        cos_iris = math.cos(p.iris_size)
        cos_pupil = math.cos(p.iris_size * 0.45)
        iris = qz > cos_iris
        pupil = qz > cos_pupil
        ring = np.clip((qz - cos_iris) / (1 - cos_iris), 0, 1)[:, None]
        ic = _f32(p.eye_color) * (0.55 + 0.6 * ring)
        col = np.where(iris[:, None], ic, _f32((0.95, 0.94, 0.92)))
        return np.where(pupil[:, None], _f32((0.03, 0.03, 0.03)), col)
    if m == "lid":
        col = np.broadcast_to(_f32(p.skin_color) * 0.96, (n, 3)).copy()
        e = float(np.clip(ip.eyes_open, 0, 1))
        yu = -0.12 + 0.74 * e
        qy = q[:, 1]
        lash = (qy > yu) & (qy < yu + 0.16 + 0.06 * (1 - e)) & (q[:, 2] > 0)
        lower = (qy < -0.08 - 0.64 * e) & (qy > -0.08 - 0.64 * e - 0.06) & (q[:, 2] > 0)
        col = np.where(lash[:, None], _f32((0.06, 0.05, 0.05)), col)
        return np.where(lower[:, None], col * np.float32(0.8), col)
    if m == "hair":
        hair = _f32(p.hair_color)
        qx, qy, qz = q[:, 0], q[:, 1], q[:, 2]
        phi = np.arctan2(qx, qz + 0.35)
        streak = 0.92 + 0.08 * np.sin(phi * p.hair_strand_freq + 3.0 * qy)
        if p.hair_style == "afro":
            streak = 0.9 + 0.1 * np.sin(qx * 60) * np.sin(qy * 60) * np.sin(qz * 60 + 1)
        col = hair[None, :] * streak[:, None]
        if p.hair_style == "buzz":
            col = col * 0.7 + 0.3 * _f32(p.skin_color)
        if back is not None:
            col = np.where(back[:, None], col * np.float32(0.7), col)
        return col
    if m == "frame":
        return np.broadcast_to(_f32(p.glasses_color), (n, 3)).copy()
    if m == "occluder":
        return np.broadcast_to(_f32(ip.occluder_color), (n, 3)).copy()
    if m == "marker":
        return np.broadcast_to(_f32(prim.color), (n, 3)).copy()
    raise ValueError(m)


# --------------------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------------------


_BLEND_TAU = 0.012


def _blend_normals(Pt, Nt, neighbours, tau: float = _BLEND_TAU):
    """Smooth-union shading: blend a skin point's normal [3, n] with the normals of the neighbouring skin
    ellipsoids (weights decay with an approximate distance to each), so the creases of the union shade smoothly.
    Also returns a crease factor in [0, 1] (how much a second surface is near) used as a cheap occlusion term."""
    acc = Nt.copy()
    wsum = np.ones(Nt.shape[1], dtype=np.float32)
    reach = np.float32(5 * tau)
    for g in neighbours:
        lo, hi = g.bound.astype(np.float32)
        near = (
            (Pt[0] > lo[0] - reach) & (Pt[0] < hi[0] + reach) & (Pt[1] > lo[1] - reach) & (Pt[1] < hi[1] + reach)
            & (Pt[2] > lo[2] - reach) & (Pt[2] < hi[2] + reach)
        )
        if not near.any():
            continue
        idx = np.nonzero(near)[0]
        q = g.local(Pt[:, idx])
        rho = np.sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2])
        w = np.exp(np.maximum(rho - 1, 0) * np.float32(-g.r.min() / tau))
        keep = w > 1e-3
        if not keep.all():
            idx, q, w = idx[keep], q[:, keep], w[keep]
        acc[:, idx] += w[None, :] * g.normal(q)
        wsum[idx] += w
    acc *= (1 / np.maximum(np.sqrt(acc[0] * acc[0] + acc[1] * acc[1] + acc[2] * acc[2]), 1e-8))[None, :]
    return acc, np.clip(wsum - 1, 0, 1)


def _boxes_touch(a: _Prim, b: _Prim, margin: float) -> bool:
    return bool(np.all(a.bound[0] - margin < b.bound[1]) and np.all(b.bound[0] - margin < a.bound[1]))


def _pixel_box(prim: _Prim, c, S: int):
    lo, hi = prim.bound
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    xy, z = project_points(corners, c, S, return_depth=True)
    if np.any(z <= 1e-3):
        return slice(0, S), slice(0, S)
    x0 = int(max(0, math.floor(xy[:, 0].min()) - 1))
    x1 = int(min(S, math.ceil(xy[:, 0].max()) + 2))
    y0 = int(max(0, math.floor(xy[:, 1].min()) - 1))
    y1 = int(min(S, math.ceil(xy[:, 1].max()) + 2))
    if x0 >= x1 or y0 >= y1:
        return None
    return slice(y0, y1), slice(x0, x1)


def render(
    identity: IdentityParams,
    image_params: ImageParams,
    c=None,
    resolution: int = 128,
    supersample: int = 2,
    return_aux: bool = False,
    markers: Iterable | None = None,
    draw_head: bool = True,
):
    """Ray-cast one image.

    Args:
        identity, image_params: the scene. ``c``: a 25-value EG3D camera label (numpy/torch/list, shape [25] or
            [1, 25]); ``None`` uses ``image_params.camera_label()``.
        resolution: output size R. supersample: rays per pixel side (box-filtered; the mean of every pixel's
            sub-rays is exactly EG3D's pixel-centre ray, so ground truth stays aligned).
        return_aux: also return a dict with ``depth`` [R, R] float32 (mean distance along the unit ray over the
            pixel's foreground sub-rays, 0 for background), ``mask`` [R, R] float32 (foreground coverage,
            occluder included), ``occluder_mask`` and ``marker_mask`` [R, R] float32 coverages.
        markers: optional extra flat-coloured spheres ``[(center_xyz, radius, rgb), ...]`` (world frame), e.g. to
            check the camera convention or to visualize 3D points. draw_head: False renders only the occluder
            (if any) and the markers over the background.

    Returns:
        uint8 [R, R, 3] image, or (image, aux).
    """
    if c is None:
        c = image_params.camera_label()
    ss = max(1, int(supersample))
    S = int(resolution) * ss
    o, Dx, Dy, Dz = _ray_dirs(c, S)
    L = _Layout(identity)
    prims = _build_scene(identity, image_params, L)
    if not draw_head:
        prims = [pr for pr in prims if pr.material == "occluder"]
    for m_center, m_radius, m_color in markers or ():
        mk = _Prim("marker", "marker", np.asarray(m_center, dtype=np.float64), np.full(3, float(m_radius)))
        mk.color = tuple(float(v) for v in m_color)
        prims.append(mk)

    tbuf = np.full((S, S), np.inf, dtype=np.float32)
    pid = np.full((S, S), -1, dtype=np.int16)
    back = np.zeros((S, S), dtype=bool)
    boxes = []
    for k, prim in enumerate(prims):
        box = _pixel_box(prim, c, S)
        boxes.append(box)
        if box is None:
            continue
        t, bk = prim.intersect(o, Dx[box], Dy[box], Dz[box])
        tv = tbuf[box]
        better = t < tv
        if not better.any():
            continue
        np.copyto(tv, t, where=better)
        pid[box][better] = k
        if bk is not None:
            back[box][better] = bk[better]
        else:
            back[box][better] = False

    # background: a linear gradient in image space
    g = ((np.arange(S, dtype=np.float32) + 0.5) / S) - 0.5
    ca, sa = math.cos(image_params.bg_angle), math.sin(image_params.bg_angle)
    s = np.clip(0.5 + ca * g[None, :] + sa * g[:, None], 0, 1)[..., None]
    img = _f32(image_params.bg_color0) * (1 - s) + _f32(image_params.bg_color1) * s

    Ld = np.asarray(image_params.light_dir, dtype=np.float32)
    Ld = Ld / np.linalg.norm(Ld)
    light_col = _f32(image_params.light_color)
    amb, dif = np.float32(image_params.ambient), np.float32(image_params.diffuse)
    o32 = o.astype(np.float32)
    skin_group = [pr for pr in prims if pr.material in ("skin", "nose_tip")]
    for k, prim in enumerate(prims):
        box = boxes[k]
        if box is None:
            continue
        sel_local = pid[box] == k
        if not sel_local.any():
            continue
        ii, jj = np.nonzero(sel_local)
        ii = ii + box[0].start
        jj = jj + box[1].start
        t = tbuf[ii, jj]
        dt = np.stack([Dx[ii, jj], Dy[ii, jj], Dz[ii, jj]])  # [3, n]
        Pt = o32[:, None] + t[None, :] * dt
        qt = prim.local(Pt) if prim.plane is None else Pt
        Nt = prim.normal(qt)
        crease = None
        if prim.material in ("skin", "nose_tip"):
            nb = [g for g in skin_group if g is not prim and _boxes_touch(prim, g, 5 * _BLEND_TAU)]
            Nt, crease = _blend_normals(Pt, Nt, nb)
        bk = back[ii, jj] if prim.cover is not None else None
        if bk is not None:
            Nt = np.where(bk[None, :], -Nt, Nt)
        if prim.plane is not None:  # two-sided planes face the camera
            Nt = np.where(((Nt * dt).sum(0) > 0)[None, :], -Nt, Nt)
        albedo = _albedo(prim, Pt.T, qt.T, bk, identity, image_params, L)
        ndl = Ld @ Nt
        lam = np.clip((ndl + 0.2) / 1.2, 0, 1)
        f = amb + dif * lam
        if crease is not None:
            f = f * (1 - 0.08 * crease)
        shade = albedo * (f[:, None] * light_col) if prim.material != "marker" else albedo
        if prim.material in ("eye", "frame", "occluder", "hair") or prim.name == "nose_tip":
            h = Ld[:, None] - dt
            nh = (h[0] * Nt[0] + h[1] * Nt[1] + h[2] * Nt[2]) / np.sqrt(h[0] * h[0] + h[1] * h[1] + h[2] * h[2])
            ks, expo = {"eye": (0.7, 60.0), "frame": (0.5, 40.0), "occluder": (0.25, 20.0), "hair": (0.12, 12.0)}.get(
                prim.material, (0.12, 20.0)
            )
            spec = ks * np.clip(nh, 0, 1) ** expo
            shade = shade + (spec[:, None] * light_col)
        img[ii, jj] = shade

    img = np.clip(img, 0, 1)
    if ss > 1:
        img = img.reshape(resolution, ss, resolution, ss, 3).mean(axis=(1, 3))
    out = np.round(img * 255).astype(np.uint8)
    if not return_aux:
        return out
    fg = np.isfinite(tbuf)
    occ_k = [k for k, pr in enumerate(prims) if pr.material == "occluder"]
    occm = np.isin(pid, occ_k) if occ_k else np.zeros_like(fg)
    depth_sum = np.where(fg, tbuf, 0).reshape(resolution, ss, resolution, ss).sum(axis=(1, 3))
    cnt = fg.reshape(resolution, ss, resolution, ss).sum(axis=(1, 3))
    depth = np.where(cnt > 0, depth_sum / np.maximum(cnt, 1), 0).astype(np.float32)
    mask = (cnt / float(ss * ss)).astype(np.float32)
    occ = occm.reshape(resolution, ss, resolution, ss).mean(axis=(1, 3)).astype(np.float32)
    mk_k = [k for k, pr in enumerate(prims) if pr.material == "marker"]
    mkm = np.isin(pid, mk_k) if mk_k else np.zeros_like(fg)
    mkc = mkm.reshape(resolution, ss, resolution, ss).mean(axis=(1, 3)).astype(np.float32)
    return out, {"depth": depth, "mask": mask, "occluder_mask": occ, "marker_mask": mkc}


def render_image(seed: int, identity_id: int, image_index: int, resolution: int = 128, split: str = "train", **kw):
    """Convenience: sample the identity and image parameters and render them at their own camera."""
    ident = sample_identity(seed, identity_id)
    ip = sample_image_params(seed, identity_id, image_index, split=split, **kw)
    return render(ident, ip, ip.camera_label(), resolution)


# --------------------------------------------------------------------------------------------------------------
# Dataset export
# --------------------------------------------------------------------------------------------------------------


def _atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1) + "\n")


def _save_png(path: Path, img: np.ndarray) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(img).save(tmp, format="PNG")


def _render_job(job):
    """Worker: render and save one image. job = (identity dict, image params dict, label list, res, ss, path)."""
    ident_d, ip_d, label, res, ss, path = job
    img = render(IdentityParams.from_dict(ident_d), ImageParams.from_dict(ip_d), np.asarray(label), res, ss)
    _save_png(Path(path), img)
    return path


def _identity_dirname(identity_id: int) -> str:
    return f"id_{identity_id:05d}"


def export_dataset(
    out_dir,
    num_identities: int,
    images_per_identity: int,
    resolution: int = 128,
    seed: int = 0,
    test_images_per_identity: int = 0,
    identity_offset: int = 0,
    yaw_range: float | Sequence[float] = 0.6,
    pitch_range: float | Sequence[float] = 0.35,
    occluder_prob: float = 0.1,
    test_yaw_range: float | Sequence[float] | None = None,
    test_pitch_range: float | Sequence[float] | None = None,
    test_occluder_prob: float = 0.0,
    supersample: int = 2,
    workers: int = 1,
    progress: bool | Callable[[int], None] = False,
) -> dict:
    """Write an EG3D-layout dataset of ``num_identities`` identities (ids ``identity_offset + i``).

    Layout::

        out_dir/identities.json                      # world settings + every identity's parameters
        out_dir/dataset.json                         # {"labels": [["id_00000/img_00000.png", [25 floats]], ...]}
                                                     #   (training images of every identity)
        out_dir/dataset_test.json                    # the same for held-out test images (when any)
        out_dir/id_00000/img_00000.png ...
        out_dir/id_00000/dataset.json                # labels with names relative to the identity folder
        out_dir/id_00000/meta.json                   # ground truth: identity params, per-image params + label
        out_dir/id_00000/test/img_00000.png ...      # held-out views (test_images_per_identity > 0)
        out_dir/id_00000/test/dataset.json

    Test images default to the training pose ranges and no occluders. Returns the identities.json dict.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    test_yaw_range = yaw_range if test_yaw_range is None else test_yaw_range
    test_pitch_range = pitch_range if test_pitch_range is None else test_pitch_range

    jobs = []
    per_identity = []
    top_labels, top_test_labels, identities = [], [], []
    for i in range(int(num_identities)):
        iid = int(identity_offset) + i
        ident = sample_identity(seed, iid)
        ident_d = ident.to_dict()
        dname = _identity_dirname(iid)
        idir = out / dname
        idir.mkdir(exist_ok=True)
        splits = [("train", int(images_per_identity), idir, yaw_range, pitch_range, occluder_prob)]
        if test_images_per_identity > 0:
            (idir / "test").mkdir(exist_ok=True)
            splits.append(
                ("test", int(test_images_per_identity), idir / "test", test_yaw_range, test_pitch_range,
                 test_occluder_prob)
            )
        meta = {
            "synthheads_version": SYNTHHEADS_VERSION,
            "identity_id": iid,
            "seed": int(seed),
            "resolution": int(resolution),
            "identity": ident_d,
            "landmarks": {k: v.tolist() for k, v in head_landmarks(ident).items()},
            "images": [],
            "test_images": [],
        }
        local = {}
        for split, n, sdir, yr, pr, op in splits:
            labels = []
            for j in range(n):
                ip = sample_image_params(seed, iid, j, split=split, yaw_range=yr, pitch_range=pr, occluder_prob=op)
                label = [float(v) for v in ip.camera_label()]
                fname = f"img_{j:05d}.png"
                labels.append([fname, label])
                rel = f"{dname}/{fname}" if split == "train" else f"{dname}/test/{fname}"
                (top_labels if split == "train" else top_test_labels).append([rel, label])
                meta["images" if split == "train" else "test_images"].append(
                    {"file": fname, "params": ip.to_dict(), "camera_label": label}
                )
                jobs.append((ident_d, ip.to_dict(), label, int(resolution), int(supersample), str(sdir / fname)))
            local[split] = (sdir, labels)
        per_identity.append((idir, meta, local))
        identities.append(
            {
                "identity_id": iid,
                "dir": dname,
                "num_images": int(images_per_identity),
                "num_test_images": int(test_images_per_identity),
                "params": ident_d,
            }
        )

    # render
    cb = None
    bar = None
    if callable(progress):
        cb = progress
    elif progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), desc="SynthHeads", unit="img")
        cb = bar.update
    try:
        if workers and workers > 1 and len(jobs) > 1:
            import multiprocessing as mp

            ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
            chunk = max(1, min(32, len(jobs) // (workers * 8) or 1))
            with ctx.Pool(int(workers)) as pool:
                for _ in pool.imap_unordered(_render_job, jobs, chunksize=chunk):
                    if cb:
                        cb(1)
        else:
            for job in jobs:
                _render_job(job)
                if cb:
                    cb(1)
    finally:
        if bar is not None:
            bar.close()

    # metadata (written after the images so that a dataset.json never lists a missing file)
    for idir, meta, local in per_identity:
        for split, (sdir, labels) in local.items():
            _atomic_write_json(sdir / "dataset.json", {"labels": labels})
        _atomic_write_json(idir / "meta.json", meta)
    _atomic_write_json(out / "dataset.json", {"labels": top_labels})
    if top_test_labels:
        _atomic_write_json(out / "dataset_test.json", {"labels": top_test_labels})
    info = {
        "synthheads_version": SYNTHHEADS_VERSION,
        "seed": int(seed),
        "resolution": int(resolution),
        "supersample": int(supersample),
        "num_identities": int(num_identities),
        "identity_offset": int(identity_offset),
        "images_per_identity": int(images_per_identity),
        "test_images_per_identity": int(test_images_per_identity),
        "yaw_range": _jsonable(yaw_range),
        "pitch_range": _jsonable(pitch_range),
        "occluder_prob": float(occluder_prob),
        "test_yaw_range": _jsonable(test_yaw_range),
        "test_pitch_range": _jsonable(test_pitch_range),
        "test_occluder_prob": float(test_occluder_prob),
        "camera": {"radius": FFHQ_RADIUS, "pivot": list(FFHQ_PIVOT), "focal": FFHQ_FOCAL},
        "identities": identities,
    }
    _atomic_write_json(out / "identities.json", info)
    return info
