"""Plain photos -> aligned face crops with EG3D camera labels.

For each photo: dlib's HOG face detector and 68-point shape predictor (model files from ``face_recognition_models``,
located without importing it), the classic FFHQ alignment crop (eye-to-eye and eye-to-mouth vectors define an
oriented square; crop, reflect-pad with blur, quad transform, LANCZOS resize), and a camera from the head pose:
the 68 landmarks in the crop are fitted to a generic 3D landmark template (``cv2.solvePnP`` with the EG3D
intrinsics when OpenCV is installed, else a least-squares scaled-orthographic fit in numpy), the viewing direction
is turned into yaw/pitch, and the label is ``sample_camera_label(yaw, pitch, focal=4.2647)`` (radius 2.7, looking at
(0, 0, 0.2), as EG3D's FFHQ labels). Files without exactly one face, or that are not usable images, are rejected
with the reason, and the rest go on.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from ..eg3d.camera import FFHQ_FOCAL, FFHQ_PIVOT, FFHQ_RADIUS, sample_camera_label
from .data import DATASET_JSON, PathLike, UnusableImage, open_image, pil_to_tensor

MIN_PHOTO_SIDE = 64  # px, shorter side of an input photo
MIN_FACE_SIZE = 48  # px, side of the FFHQ crop square in the input photo
STRONG_FACE_SCORE = 0.5  # HOG detections below this are "weak" (ignored next to a strong one)
DETECT_MAX_SIDE = 1024  # photos are downscaled to this for detection (landmarks use the full image)
FACES_INSTALL_HINT = "pip install dlib-bin face_recognition_models"
REPORT_JSON = "preprocess_report.json"

# A generic 3D face (mean shape, cm) for 14 of the 68 dlib landmarks, in EG3D's world frame: x toward the
# subject's left (image right in a frontal view), y up, z out of the face (toward a frontal camera).
TEMPLATE_INDICES = np.array([17, 21, 22, 26, 36, 39, 42, 45, 31, 35, 48, 54, 57, 8])
TEMPLATE_3D = np.array(
    [
        [-6.825897, 6.760612, 4.402142],  # 17 brow, outer end (image left)
        [-1.330353, 7.122144, 6.903745],  # 21 brow, inner end
        [1.330353, 7.122144, 6.903745],  # 22
        [6.825897, 6.760612, 4.402142],  # 26
        [-5.311432, 5.485328, 3.987654],  # 36 eye, outer corner
        [-1.789930, 5.393625, 4.413414],  # 39 eye, inner corner
        [1.789930, 5.393625, 4.413414],  # 42
        [5.311432, 5.485328, 3.987654],  # 45
        [-2.005628, 1.409845, 6.165652],  # 31 nose wing
        [2.005628, 1.409845, 6.165652],  # 35
        [-2.774015, -2.080775, 5.048531],  # 48 mouth corner
        [2.774015, -2.080775, 5.048531],  # 54
        [0.000000, -3.116408, 6.097667],  # 57 lower lip, centre
        [0.000000, -7.415691, 4.070434],  # 8 chin
    ]
)


@dataclass
class PreprocessResult:
    """``images`` [N, 3, R, R] in [-1, 1] and ``labels`` [N, 25] of the accepted photos (``names`` are their paths,
    ``crops`` the aligned PIL crops, ``poses`` (yaw, pitch) in radians); ``rejected`` lists (path, reason)."""

    images: torch.Tensor
    labels: torch.Tensor
    names: list[str]
    rejected: list[tuple[str, str]]
    crops: list = field(default_factory=list)
    poses: list[tuple[float, float]] = field(default_factory=list)
    out_dir: Optional[Path] = None
    pose_method: str = ""
    details: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.names)


# ------------------------------------------------------------------------------------------------- dlib models
def face_models_dir() -> Path:
    # face_recognition_models/__init__ imports pkg_resources (removed from recent setuptools): never import it.
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        raise ImportError(f"photo preprocessing needs the dlib model files of face_recognition_models: {FACES_INSTALL_HINT}")
    return Path(spec.origin).parent / "models"


@functools.lru_cache(maxsize=1)
def _dlib_models():
    try:
        import dlib
    except ImportError as e:
        raise ImportError(f"photo preprocessing needs dlib: {FACES_INSTALL_HINT}") from e
    predictor = face_models_dir() / "shape_predictor_68_face_landmarks.dat"
    if not predictor.is_file():
        raise ImportError(f"{predictor} is missing; reinstall face_recognition_models ({FACES_INSTALL_HINT})")
    return dlib, dlib.get_frontal_face_detector(), dlib.shape_predictor(str(predictor))


def detect_faces(img) -> list[tuple[tuple[float, float, float, float], float]]:
    """HOG detections ((left, top, right, bottom) in ``img`` pixels, score), best first."""
    from PIL import Image

    _, detector, _ = _dlib_models()
    scale = min(1.0, DETECT_MAX_SIDE / max(img.size))
    small = img if scale == 1.0 else img.resize((round(img.width * scale), round(img.height * scale)), Image.BILINEAR)
    upsample = 1 if max(small.size) >= 300 else 2
    rects, scores, _ = detector.run(np.asarray(small), upsample, 0.0)
    out = [((r.left() / scale, r.top() / scale, r.right() / scale, r.bottom() / scale), float(s)) for r, s in zip(rects, scores)]
    return sorted(out, key=lambda d: -d[1])


# Index of each of the 68 landmarks in the mirrored face (jaw, brows, nose, eyes, outer and inner lips).
MIRROR_68 = np.array(
    list(range(16, -1, -1)) + list(range(26, 16, -1)) + [27, 28, 29, 30] + [35, 34, 33, 32, 31]
    + [45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40]
    + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55] + [64, 63, 62, 61, 60, 67, 66, 65]
)


def _predict(img_array: np.ndarray, box) -> np.ndarray:
    dlib, _, predictor = _dlib_models()
    rect = dlib.rectangle(*(int(round(v)) for v in box))
    shape = predictor(img_array, rect)
    return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)


def face_landmarks(img, box, symmetric: bool = True) -> np.ndarray:
    """68 dlib landmarks [68, 2] (x, y) in ``img`` pixels for a face box (left, top, right, bottom).

    ``symmetric``: also predict on the mirrored photo and average the two (mirrored back): the shape predictor is
    not mirror-symmetric, and averaging halves its jitter and makes the head pose of a mirrored photo exactly the
    mirrored pose."""
    arr = np.asarray(img)
    lm = _predict(arr, box)
    if not symmetric:
        return lm
    w = arr.shape[1]
    left, top, right, bottom = box
    mirrored = _predict(np.ascontiguousarray(arr[:, ::-1]), (w - 1 - right, top, w - 1 - left, bottom))
    mirrored = mirrored[MIRROR_68]
    mirrored[:, 0] = w - 1 - mirrored[:, 0]
    return (lm + mirrored) / 2


# ------------------------------------------------------------------------------------------------- FFHQ crop
def ffhq_quad(lm: np.ndarray) -> tuple[np.ndarray, float]:
    """The FFHQ oriented crop square from 68 landmarks: corners [4, 2] (top-left, bottom-left, bottom-right,
    top-right of the output) and its side ``qsize``."""
    eye_left, eye_right = lm[36:42].mean(0), lm[42:48].mean(0)
    eye_avg, eye_to_eye = (eye_left + eye_right) * 0.5, eye_right - eye_left
    mouth_avg = (lm[48] + lm[54]) * 0.5
    eye_to_mouth = mouth_avg - eye_avg
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * 0.1
    quad = np.stack([c - x - y, c - x + y, c + x + y, c + x - y])
    return quad, float(np.hypot(*x) * 2)


def ffhq_align(img, lm: np.ndarray, output_size: int, transform_size: Optional[int] = None, enable_padding: bool = True):
    """The FFHQ alignment (NVlabs/ffhq-dataset ``recreate_aligned_images``) -> (crop, landmarks in crop pixels)."""
    import scipy.ndimage
    from PIL import Image

    transform_size = transform_size or min(4 * output_size, 4096)
    quad, qsize = ffhq_quad(lm)
    # Landmarks in output pixels: the quad is a rotated square, so the map is a similarity.
    q0, ex, ey = quad[0], quad[3] - quad[0], quad[1] - quad[0]
    lm_crop = np.stack([(lm - q0) @ ex / (ex @ ex), (lm - q0) @ ey / (ey @ ey)], axis=1) * output_size

    # Shrink.
    shrink = int(np.floor(qsize / output_size * 0.5))
    if shrink > 1:
        rsize = (int(np.rint(float(img.size[0]) / shrink)), int(np.rint(float(img.size[1]) / shrink)))
        img = img.resize(rsize, Image.LANCZOS)
        quad = quad / shrink
        qsize = qsize / shrink
    # Crop.
    border = max(int(np.rint(qsize * 0.1)), 3)
    crop = (int(np.floor(min(quad[:, 0]))), int(np.floor(min(quad[:, 1]))), int(np.ceil(max(quad[:, 0]))), int(np.ceil(max(quad[:, 1]))))
    crop = (max(crop[0] - border, 0), max(crop[1] - border, 0), min(crop[2] + border, img.size[0]), min(crop[3] + border, img.size[1]))
    if crop[2] - crop[0] < img.size[0] or crop[3] - crop[1] < img.size[1]:
        img = img.crop(crop)
        quad = quad - crop[0:2]
    # Pad (reflect, blurred and faded toward the median colour, as FFHQ).
    pad = (int(np.floor(min(quad[:, 0]))), int(np.floor(min(quad[:, 1]))), int(np.ceil(max(quad[:, 0]))), int(np.ceil(max(quad[:, 1]))))
    pad = (max(-pad[0] + border, 0), max(-pad[1] + border, 0), max(pad[2] - img.size[0] + border, 0), max(pad[3] - img.size[1] + border, 0))
    if enable_padding and max(pad) > border - 4:
        pad = np.maximum(pad, int(np.rint(qsize * 0.3)))
        arr = np.pad(np.float32(img), ((pad[1], pad[3]), (pad[0], pad[2]), (0, 0)), "reflect")
        h, w, _ = arr.shape
        yy, xx, _ = np.ogrid[:h, :w, :1]
        mask = np.maximum(
            1.0 - np.minimum(np.float32(xx) / pad[0], np.float32(w - 1 - xx) / pad[2]),
            1.0 - np.minimum(np.float32(yy) / pad[1], np.float32(h - 1 - yy) / pad[3]),
        )
        blur = qsize * 0.02
        arr += (scipy.ndimage.gaussian_filter(arr, [blur, blur, 0]) - arr) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
        arr += (np.median(arr, axis=(0, 1)) - arr) * np.clip(mask, 0.0, 1.0)
        img = Image.fromarray(np.uint8(np.clip(np.rint(arr), 0, 255)), "RGB")
        quad = quad + pad[:2]
    # Transform.
    img = img.transform((transform_size, transform_size), Image.QUAD, tuple((quad + 0.5).flatten()), Image.BILINEAR)
    if output_size < transform_size:
        img = img.resize((output_size, output_size), Image.LANCZOS)
    return img, lm_crop


# ------------------------------------------------------------------------------------------------- head pose
def _has_cv2() -> bool:
    return importlib.util.find_spec("cv2") is not None


def _direction_to_yaw_pitch(d: np.ndarray, radius: float = FFHQ_RADIUS, lookat=FFHQ_PIVOT) -> tuple[float, float]:
    """Unit vector from the face toward the camera (world frame) -> the yaw/pitch of ``look_at_pose`` whose camera
    (on the ``radius`` sphere around the origin, looking at ``lookat``) sees the face from that direction."""
    d = d / np.linalg.norm(d)
    p = np.asarray(lookat, dtype=np.float64)
    pd = float(p @ d)
    t = -pd + math.sqrt(max(pd * pd - float(p @ p) + radius * radius, 0.0))
    o = p + t * d  # camera centre on the sphere
    cos_phi = float(np.clip(o[1] / np.linalg.norm(o), -1, 1))
    yaw = math.pi / 2 - math.atan2(o[2], o[0])
    pitch = math.pi * (1 - cos_phi) / 2 - math.pi / 2
    return float(yaw), float(pitch)


def _intrinsics(resolution: int, focal: float) -> np.ndarray:
    return np.array([[focal * resolution, 0, resolution / 2], [0, focal * resolution, resolution / 2], [0, 0, 1]], dtype=np.float64)


def _rodrigues(r: np.ndarray) -> np.ndarray:
    theta = float(np.linalg.norm(r))
    if theta < 1e-12:
        return np.eye(3)
    k = r / theta
    Kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(theta) * Kx + (1 - math.cos(theta)) * Kx @ Kx


def _rotation_to_vector(R: np.ndarray) -> np.ndarray:
    theta = math.acos(float(np.clip((np.trace(R) - 1) / 2, -1, 1)))
    if theta < 1e-9:
        return np.zeros(3)
    w = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]]) / (2 * math.sin(theta))
    return w * theta


def _pose_orthographic(lm_crop: np.ndarray, resolution: int, focal: float) -> tuple[np.ndarray, np.ndarray]:
    """Scaled-orthographic least-squares fit of the template -> (R world->camera [3, 3], t [3]) as an initial pose."""
    pts = lm_crop[TEMPLATE_INDICES]
    p = (pts - resolution / 2) / (focal * resolution)  # normalized image coordinates (x right, y down)
    centre = TEMPLATE_3D.mean(0)
    P = TEMPLATE_3D - centre
    pc = p - p.mean(0)
    M = np.linalg.lstsq(P, pc, rcond=None)[0].T  # [2, 3]: pc ~ P M^T
    U, S, Vt = np.linalg.svd(M, full_matrices=False)
    R2 = U @ Vt  # nearest pair of orthonormal rows
    R = np.vstack([R2, np.cross(R2[0], R2[1])])
    depth = 1.0 / max(float(S.mean()), 1e-9)
    t = np.array([p.mean(0)[0] * depth, p.mean(0)[1] * depth, depth]) - R @ centre
    return R, t


def _pose_perspective_lstsq(lm_crop: np.ndarray, resolution: int, focal: float) -> np.ndarray:
    """Perspective least-squares (Levenberg-Marquardt, scipy) from the orthographic start -> R world->camera."""
    from scipy.optimize import least_squares

    R0, t0 = _pose_orthographic(lm_crop, resolution, focal)
    K = _intrinsics(resolution, focal)
    pts = lm_crop[TEMPLATE_INDICES]

    def residuals(x):
        R = _rodrigues(x[:3])
        cam = TEMPLATE_3D @ R.T + x[3:]
        proj = cam @ K.T
        return ((proj[:, :2] / proj[:, 2:3]) - pts).ravel() / resolution

    sol = least_squares(residuals, np.concatenate([_rotation_to_vector(R0), t0]), method="lm")
    return _rodrigues(sol.x[:3]) if sol.success and sol.x[5] > 0 else R0


def _pose_pnp(lm_crop: np.ndarray, resolution: int, focal: float) -> np.ndarray:
    import cv2

    R0, t0 = _pose_orthographic(lm_crop, resolution, focal)
    rvec0, _ = cv2.Rodrigues(R0)
    ok, rvec, tvec = cv2.solvePnP(
        TEMPLATE_3D, np.ascontiguousarray(lm_crop[TEMPLATE_INDICES], dtype=np.float64), _intrinsics(resolution, focal), None,
        rvec0, t0.reshape(3, 1).copy(), True, cv2.SOLVEPNP_ITERATIVE,
    )
    if not ok or float(np.asarray(tvec).ravel()[2]) <= 0:
        return R0
    R, _ = cv2.Rodrigues(rvec)
    return R


def estimate_pose(lm_crop: np.ndarray, resolution: int, focal: float = FFHQ_FOCAL, method: str = "auto") -> tuple[float, float, str]:
    """(yaw, pitch, method used) of the EG3D camera that sees the 68 landmarks ``lm_crop`` (crop pixels) of a
    ``resolution`` crop with normalized ``focal``. ``method``: 'auto' (``cv2.solvePnP`` when OpenCV is installed,
    else 'lstsq'), 'pnp', or 'lstsq' (numpy/scipy: scaled-orthographic fit refined by perspective least squares)."""
    if method == "auto":
        method = "pnp" if _has_cv2() else "lstsq"
    if method == "pnp":
        R = _pose_pnp(lm_crop, resolution, focal)
    elif method == "lstsq":
        R = _pose_perspective_lstsq(lm_crop, resolution, focal)
    else:
        raise ValueError(f"pose method must be 'auto', 'pnp' or 'lstsq', got {method!r}")
    # Rows of R are the camera axes in the template (world) frame; the camera looks along its z row.
    yaw, pitch = _direction_to_yaw_pitch(-R[2])
    return yaw, pitch, "solvepnp" if method == "pnp" else "lstsq-template"


# ------------------------------------------------------------------------------------------------- driver
def _expand(paths) -> list[Path]:
    if isinstance(paths, (str, Path)):
        paths = [paths]
    out = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            out.extend(sorted(q for q in p.iterdir() if q.is_file() and not q.name.startswith(".")))
        else:
            out.append(p)
    return out


def _unique_stem(stem: str, used: set[str]) -> str:
    name, k = stem, 1
    while name in used:
        k += 1
        name = f"{stem}_{k}"
    used.add(name)
    return name


def process_photo(path: PathLike, resolution: int, min_face_size: int = MIN_FACE_SIZE, pose_method: str = "auto") -> dict:
    """One photo -> {'crop', 'yaw', 'pitch', 'method', 'box', 'score', 'landmarks', 'ignored_faces'}; raises
    :class:`UnusableImage` with the reason it cannot be used."""
    img = open_image(path, min_side=MIN_PHOTO_SIDE)
    faces = detect_faces(img)
    if not faces:
        raise UnusableImage("no face found")
    strong = [f for f in faces if f[1] >= STRONG_FACE_SCORE]
    if len(strong) >= 2:
        raise UnusableImage(f"{len(strong)} faces found; use photos showing exactly one person (or crop them)")
    if not strong and len(faces) >= 2:
        raise UnusableImage(f"{len(faces)} possible faces found, none clearly; use a photo with one clear face")
    box, score = strong[0] if strong else faces[0]
    lm = face_landmarks(img, box)
    _, qsize = ffhq_quad(lm)
    if qsize < min_face_size:
        raise UnusableImage(f"face too small ({qsize:.0f} px across the crop, need at least {min_face_size} px); use a larger photo")
    crop, lm_crop = ffhq_align(img, lm, resolution)
    yaw, pitch, method = estimate_pose(lm_crop, resolution, method=pose_method)
    return {
        "crop": crop, "yaw": yaw, "pitch": pitch, "method": method, "box": [round(v, 1) for v in box], "score": round(score, 3),
        "landmarks": lm_crop, "ignored_faces": len(faces) - 1, "face_size": round(qsize, 1),
    }


def preprocess_photos(
    paths: Union[PathLike, Sequence[PathLike]],
    out_dir: Optional[PathLike] = None,
    resolution: int = 512,
    progress: bool = False,
    min_face_size: int = MIN_FACE_SIZE,
    pose_method: str = "auto",
    callback=None,
) -> PreprocessResult:
    """Detect, align and label the faces in ``paths`` (files, or folders whose files are all tried).

    Returns a :class:`PreprocessResult`; photos that cannot be used are listed in ``.rejected`` as (path, reason)
    and the others go on. With ``out_dir`` the crops (``<photo stem>.png``), an EG3D ``dataset.json`` and
    ``preprocess_report.json`` (poses, detections, rejections) are written there (``load_eg3d_dataset(out_dir)``
    reads them back). ``callback(dict(stage='preprocess', index, total, file, accepted))`` is called per photo."""

    files = _expand(paths)
    resolution = int(resolution)
    if resolution < 16:
        raise ValueError(f"resolution must be at least 16 px, got {resolution}")
    _dlib_models()  # a missing install fails here, once, with the install command
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(files), desc="preprocess", unit="photo")
    accepted, rejected = [], []
    try:
        for i, f in enumerate(files):
            ok = True
            try:
                info = process_photo(f, resolution, min_face_size, pose_method)
                info["file"] = str(f)
                accepted.append(info)
            except UnusableImage as e:
                rejected.append((str(f), str(e)))
                ok = False
            if bar is not None:
                bar.update(1)
            if callback is not None:
                callback({"stage": "preprocess", "index": i + 1, "total": len(files), "file": str(f), "accepted": ok})
    finally:
        if bar is not None:
            bar.close()

    crops = [a["crop"] for a in accepted]
    poses = [(a["yaw"], a["pitch"]) for a in accepted]
    images = torch.stack([pil_to_tensor(c) for c in crops]) if crops else torch.zeros(0, 3, resolution, resolution)
    labels = (
        sample_camera_label(torch.tensor([p[0] for p in poses]), torch.tensor([p[1] for p in poses]), focal=FFHQ_FOCAL)
        if poses
        else torch.zeros(0, 25)
    )
    method = accepted[0]["method"] if accepted else ("solvepnp" if (pose_method == "pnp" or (pose_method == "auto" and _has_cv2())) else "lstsq-template")
    details = [
        {k: v for k, v in a.items() if k not in ("crop", "landmarks")} | {"landmarks": np.round(a["landmarks"], 2).tolist()} for a in accepted
    ]
    result = PreprocessResult(
        images=images, labels=labels, names=[a["file"] for a in accepted], rejected=rejected, crops=crops, poses=poses,
        pose_method=method, details=details,
    )
    if out_dir is not None:
        result.out_dir = _write_preprocessed(Path(out_dir), result, resolution)
    return result


def _write_preprocessed(out: Path, result: PreprocessResult, resolution: int) -> Path:
    from ..utils.io import atomic_path

    out.mkdir(parents=True, exist_ok=True)
    sources = {Path(n).resolve() for n in result.names}
    used: set[str] = set()
    entries = []
    for name, crop, label, info in zip(result.names, result.crops, result.labels, result.details):
        stem = _unique_stem(Path(name).stem, used)
        target = out / f"{stem}.png"
        if target.resolve() in sources:  # never overwrite an input photo
            stem = _unique_stem(f"{stem}_crop", used)
            target = out / f"{stem}.png"
        with atomic_path(target) as tmp:
            crop.save(tmp, format="PNG")
        entries.append([target.name, [float(v) for v in label]])
        info["crop"] = target.name
    report = {
        "resolution": resolution,
        "pose_method": result.pose_method,
        "camera": {"radius": 2.7, "lookat": [0, 0, 0.2], "focal": FFHQ_FOCAL},
        "accepted": result.details,
        "rejected": [{"file": f, "reason": r} for f, r in result.rejected],
    }
    with atomic_path(out / REPORT_JSON) as tmp:
        tmp.write_text(json.dumps(report, indent=1))
    with atomic_path(out / DATASET_JSON) as tmp:  # last, so it never lists a missing crop
        tmp.write_text(json.dumps({"labels": entries}, indent=1))
    return out
