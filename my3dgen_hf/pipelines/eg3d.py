"""``EG3DPipeline``: sample identities, render views, orbit videos and meshes from an ``EG3DGenerator``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Union

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput

from ..assets import resolve_pretrained
from ..eg3d.camera import DEFAULT_FOV_DEG, frontal_conditioning_label, orbit_camera_labels, sample_camera_label
from ..eg3d.generator import EG3DGenerator
from ..lora.loader import EG3DLoraLoaderMixin
from ..utils.export import export_mesh, marching_cubes_mesh, sample_grid, to_uint8, write_video
from ..utils.io import PathLike

Angles = Union[float, Sequence[float], torch.Tensor]


@dataclass
class EG3DPipelineOutput(BaseOutput):
    """``images``: PIL list, uint8 array [N, H, W, 3] or tensor [N, 3, H, W] in [-1, 1] (by ``output_type``);
    ``depths``: [N, 1, r, r] ray depths when asked for; ``ws``: the latents used [N, num_ws, w_dim]."""

    images: Union[List[PIL.Image.Image], np.ndarray, torch.Tensor]
    depths: Optional[torch.Tensor] = None
    ws: Optional[torch.Tensor] = None


class EG3DPipeline(DiffusionPipeline, EG3DLoraLoaderMixin):
    """Render an EG3D prior (with identity adapters). ``EG3DPipeline.from_pretrained("my3dgen-hf/demo-synthheads")``
    loads the shipped demo prior without network; a local folder or another Hub id loads the same way."""

    model_cpu_offload_seq = "generator"

    def __init__(self, generator: EG3DGenerator):
        super().__init__()
        self.register_modules(generator=generator)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        return super().from_pretrained(resolve_pretrained(pretrained_model_name_or_path), **kwargs)

    # ----------------------------------------------------------------------------------------------- latents
    def _z(self, seed, latents, num_images):
        G = self.generator
        if latents is not None:
            z = torch.as_tensor(latents, dtype=torch.float32)
            if z.ndim != 2 or z.shape[1] != G.z_dim:
                raise ValueError(f"latents must have shape [N, {G.z_dim}], got {tuple(z.shape)}")
            return z.to(self.device)
        if seed is None:
            seed = int(torch.randint(0, 2**31 - 1, ()).item())
        seeds = [seed] if isinstance(seed, int) else list(seed)
        if len(seeds) == 1 and num_images > 1:
            gen = torch.Generator().manual_seed(seeds[0])
            return torch.randn(num_images, G.z_dim, generator=gen).to(self.device)
        # One z per seed, drawn as the original gen_samples.py does (numpy RandomState(seed).randn).
        return torch.from_numpy(np.stack([np.random.RandomState(s).randn(G.z_dim) for s in seeds])).float().to(self.device)

    def conditioning_label(self, n: int = 1) -> torch.Tensor:
        """The frontal camera [n, 25] used for pose conditioning of the mapping network."""
        return frontal_conditioning_label(self.generator.rendering_kwargs, device=self.device).repeat(n, 1)

    @torch.no_grad()
    def get_ws(
        self,
        seed: Union[int, Sequence[int], None] = None,
        latents: Optional[torch.Tensor] = None,
        num_images: int = 1,
        truncation_psi: float = 0.7,
        truncation_cutoff: Optional[int] = 14,
    ) -> torch.Tensor:
        """Map z (from seeds or ``latents``) with the frontal conditioning camera -> ws [N, num_ws, w_dim]."""
        z = self._z(seed, latents, num_images)
        return self.generator.mapping(z, self.conditioning_label(len(z)), truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)

    def camera(self, yaw: Angles = 0.0, pitch: Angles = 0.0, fov: float = DEFAULT_FOV_DEG) -> torch.Tensor:
        rk = self.generator.rendering_kwargs
        return sample_camera_label(
            torch.as_tensor(yaw, dtype=torch.float32), torch.as_tensor(pitch, dtype=torch.float32),
            radius=rk.get("avg_camera_radius", 2.7), lookat=rk.get("avg_camera_pivot", (0, 0, 0.2)), fov_degrees=fov, device=self.device,
        )

    # ------------------------------------------------------------------------------------------------ render
    @torch.no_grad()
    def __call__(
        self,
        seed: Union[int, Sequence[int], None] = None,
        latents: Optional[torch.Tensor] = None,
        ws: Optional[torch.Tensor] = None,
        yaw: Angles = 0.0,
        pitch: Angles = 0.0,
        fov: float = DEFAULT_FOV_DEG,
        truncation_psi: float = 0.7,
        truncation_cutoff: Optional[int] = 14,
        num_images: int = 1,
        neural_rendering_resolution: Optional[int] = None,
        noise_mode: str = "const",
        output_type: str = "pil",
        return_depth: bool = False,
        return_dict: bool = True,
    ):
        """Render ``num_images`` identities (one per seed, or from ``latents`` z / ``ws``) at yaw/pitch (radians,
        scalars or one per image). Rendering is deterministic by default."""
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}")
        if ws is None:
            ws = self.get_ws(seed, latents, num_images, truncation_psi, truncation_cutoff)
        ws = ws.to(self.device, torch.float32)
        c = self.camera(yaw, pitch, fov)
        if c.shape[0] == 1:
            c = c.repeat(len(ws), 1)
        elif len(ws) == 1:
            ws = ws.repeat(len(c), 1, 1)
        if c.shape[0] != len(ws):
            raise ValueError(f"got {len(ws)} latents but {c.shape[0]} camera poses; give one pose or one per latent")
        out = self.generator.synthesis(ws, c, neural_rendering_resolution=neural_rendering_resolution, noise_mode=noise_mode, deterministic=True)
        images = out["image"]
        if output_type != "pt":
            images = to_uint8(images)
            if output_type == "pil":
                images = [PIL.Image.fromarray(im) for im in images]
        depths = out["image_depth"] if return_depth else None
        if not return_dict:
            return (images, depths)
        return EG3DPipelineOutput(images=images, depths=depths, ws=ws)

    @torch.no_grad()
    def render_orbit(
        self, ws: torch.Tensor, num_frames: int = 60, yaw_range: float = 0.35, pitch_range: float = 0.25, fov: float = DEFAULT_FOV_DEG,
        neural_rendering_resolution: Optional[int] = None, batch_size: int = 4,
    ) -> np.ndarray:
        """Frames uint8 [num_frames, H, W, 3] of one identity ``ws`` [1, num_ws, w_dim] on an elliptic orbit."""
        G = self.generator
        rk = G.rendering_kwargs
        cams = orbit_camera_labels(
            num_frames, yaw_range, pitch_range, rk.get("avg_camera_radius", 2.7), rk.get("avg_camera_pivot", (0, 0, 0.2)), fov_degrees=fov,
            device=self.device,
        )
        ws = ws[:1].to(self.device)
        planes = G.synthesize_planes(ws, noise_mode="const")  # the backbone runs once per identity
        frames = []
        for i in self.progress_bar(range(0, num_frames, batch_size)):
            c = cams[i : i + batch_size]
            n = len(c)
            out = G.render_planes(planes.expand(n, -1, -1, -1, -1), ws.expand(n, -1, -1), c, neural_rendering_resolution, deterministic=True)
            frames.append(to_uint8(out["image"]))
        return np.concatenate(frames)

    def save_orbit_video(self, path: PathLike, ws: Optional[torch.Tensor] = None, seed: Optional[int] = None, fps: int = 24, **orbit_kwargs) -> Path:
        """Write an MP4 orbit of ``ws`` (or of the identity from ``seed``)."""
        if ws is None:
            ws = self.get_ws(seed=seed if seed is not None else 0)
        return write_video(self.render_orbit(ws, **orbit_kwargs), path, fps=fps)

    # ------------------------------------------------------------------------------------------------- shape
    @torch.no_grad()
    def extract_mesh(
        self,
        ws: Optional[torch.Tensor] = None,
        seed: Optional[int] = None,
        resolution: int = 128,
        level: float = 10.0,
        output_path: Optional[PathLike] = None,
        chunk: int = 262144,
    ):
        """Marching cubes on the density field (raw sigma, iso ``level`` as the original's shape export) inside
        the rendering box. Returns a ``trimesh.Trimesh``; writes PLY/GLB/OBJ/STL when ``output_path`` is given."""
        G = self.generator
        if ws is None:
            ws = self.get_ws(seed=seed if seed is not None else 0)
        ws = ws[:1].to(self.device)
        planes = G.synthesize_planes(ws, noise_mode="const")
        half = float(G.rendering_kwargs["box_warp"]) / 2

        def density(points: torch.Tensor) -> torch.Tensor:
            p = points.unsqueeze(0)
            return G.sample_mixed(p, torch.zeros_like(p), ws, planes=planes)["sigma"]

        volume = sample_grid(density, resolution, [-half] * 3, [half] * 3, chunk=chunk, device=self.device)
        # Close the surface at the box faces, as the original shape export pads its borders.
        pad = max(1, resolution // 64)
        floor = float(volume.min())
        for axis in range(3):
            idx = [slice(None)] * 3
            idx[axis] = slice(0, pad)
            volume[tuple(idx)] = floor
            idx[axis] = slice(resolution - pad, resolution)
            volume[tuple(idx)] = floor
        mesh = marching_cubes_mesh(volume, level, [-half] * 3, [half] * 3, inside="above")
        if output_path is not None:
            export_mesh(mesh, output_path)
        return mesh
