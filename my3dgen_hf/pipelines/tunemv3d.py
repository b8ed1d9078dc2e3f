"""``TuneMV3DPipeline``: text -> n 3D-consistent views + a NeuS field, by tuning a frozen 2D diffusion model.

Each denoising step runs the interactive module (encoder E + latent NeuS field rendering x0 of every view), the
modulation module (encoder O on the renders, zero convolutions) and the frozen ``UNet2DConditionModel``, which
takes O's outputs as ControlNet-style residuals. Loading: ``TuneMV3DPipeline.from_pretrained(path)`` reads a
saved TuneMV3D pipeline, or a Stable Diffusion folder (fresh interactive/modulation modules are then created).
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Union

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.image_processor import VaeImageProcessor
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils import BaseOutput, logging
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPTextModel, CLIPTokenizer

from ..assets import resolve_pretrained
from ..tunemv3d.cameras import camera_labels, orbit_cameras, ring_cameras, view_colors
from ..tunemv3d.denoiser import predict_noise
from ..tunemv3d.interactive import TuneMV3DField, TuneMV3DInteractiveModel
from ..tunemv3d.lora import TuneMV3DLoraLoaderMixin
from ..tunemv3d.modulation import TuneMV3DModulationModel
from ..utils.export import export_mesh, marching_cubes_mesh, sample_grid, to_uint8, write_video
from ..utils.io import PathLike

logger = logging.get_logger(__name__)

_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "revision", "token", "proxies")


@dataclass
class TuneMV3DPipelineOutput(BaseOutput):
    """``images``: the B x n views, object-major (PIL list, float array [B n, H, W, 3] in [0, 1], or tensor
    [B n, 3, H, W] in [0, 1]); ``field``: the NeuS field of the B objects (``field(points [M, 3])`` -> SDF);
    ``cameras``: [B, n, 25] labels of the views; ``latents``: the final x0 latents [B, n, C, h, w]."""

    images: Union[List[PIL.Image.Image], np.ndarray, torch.Tensor]
    field: TuneMV3DField
    cameras: torch.Tensor
    latents: Optional[torch.Tensor] = None


class TuneMV3DPipeline(DiffusionPipeline, TuneMV3DLoraLoaderMixin):
    model_cpu_offload_seq = "text_encoder->interactive->modulation->unet->vae"
    _optional_components = ["vae"]

    def __init__(
        self,
        vae: Optional[AutoencoderKL],
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: KarrasDiffusionSchedulers,
        interactive: TuneMV3DInteractiveModel,
        modulation: TuneMV3DModulationModel,
    ):
        super().__init__()
        self.register_modules(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler, interactive=interactive, modulation=modulation
        )
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)

    # ------------------------------------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Load a saved TuneMV3D pipeline; a folder without interactive/modulation modules (e.g. Stable Diffusion
        as ``StableDiffusionPipeline.save_pretrained`` writes it) goes through :meth:`from_pretrained_base`.
        ``"my3dgen-hf/demo-synthobjects"`` is the small model that ships with the package (found without network)."""
        pretrained_model_name_or_path = resolve_pretrained(pretrained_model_name_or_path)
        index = cls.load_config(pretrained_model_name_or_path, **{k: kwargs[k] for k in _HUB_KWARGS if k in kwargs})
        if all(index.get(name, [None])[0] is not None for name in ("interactive", "modulation")):
            for unused in ("interactive_kwargs", "modulation_kwargs"):  # only for fresh modules
                if kwargs.pop(unused, None):
                    logger.warning(f"{unused} ignored: {pretrained_model_name_or_path} already has trained TuneMV3D modules")
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        return cls.from_pretrained_base(pretrained_model_name_or_path, **kwargs)

    @classmethod
    def from_pretrained_base(
        cls,
        pretrained_model_name_or_path,
        interactive_kwargs: Optional[dict] = None,
        modulation_kwargs: Optional[dict] = None,
        torch_dtype: Optional[torch.dtype] = None,
        **kwargs,
    ) -> "TuneMV3DPipeline":
        """Build a TuneMV3D pipeline on a 2D text-to-image folder (``unet/``, ``vae/`` (optional), ``text_encoder/``,
        ``tokenizer/``, ``scheduler/``, ``model_index.json``) with fresh interactive and modulation modules."""
        hub = {k: kwargs.pop(k) for k in _HUB_KWARGS if k in kwargs}
        model_kwargs = {k: kwargs.pop(k) for k in ("variant", "use_safetensors") if k in kwargs}
        if kwargs:
            raise TypeError(f"unexpected arguments: {sorted(kwargs)}")
        pretrained_model_name_or_path = resolve_pretrained(pretrained_model_name_or_path)
        index = cls.load_config(pretrained_model_name_or_path, **hub)

        def load(name, is_model=True):
            library, class_name = index.get(name, [None, None])
            if library is None:
                return None
            component_cls = getattr(importlib.import_module(library), class_name)
            extra = dict(model_kwargs, torch_dtype=torch_dtype) if is_model else {}
            extra = {k: v for k, v in extra.items() if v is not None}
            return component_cls.from_pretrained(pretrained_model_name_or_path, subfolder=name, **hub, **extra)

        unet = load("unet")
        if unet is None:
            raise ValueError(f"{pretrained_model_name_or_path} has no unet in its model_index.json")
        interactive = TuneMV3DInteractiveModel.from_unet(unet, **(interactive_kwargs or {}))
        modulation_kwargs = dict(modulation_kwargs or {})
        if interactive.config.render_target == "features":  # O takes the rendered features (ablation)
            modulation_kwargs.setdefault("render_channels", interactive.num_render_channels)
        modulation = TuneMV3DModulationModel.from_unet(unet, **modulation_kwargs)
        if torch_dtype is not None:
            interactive, modulation = interactive.to(torch_dtype), modulation.to(torch_dtype)
        return cls(
            vae=load("vae"), text_encoder=load("text_encoder"), tokenizer=load("tokenizer", False), unet=unet,
            scheduler=load("scheduler", False), interactive=interactive, modulation=modulation,
        )

    def enable_gradient_checkpointing(self):
        """Activation checkpointing in the UNet, the modulation encoder and the interactive module (training)."""
        for model in (self.unet, self.modulation, self.interactive):
            model.enable_gradient_checkpointing()

    # ---------------------------------------------------------------------------------------------- helpers
    def encode_prompt(self, prompt, device, do_classifier_free_guidance, negative_prompt=None, prompt_embeds=None, negative_prompt_embeds=None, clip_skip=None):
        """Text embeddings [B, L, D] (and the negative ones), exactly as Stable Diffusion computes them."""
        return StableDiffusionPipeline.encode_prompt(
            self, prompt, device, 1, do_classifier_free_guidance, negative_prompt, prompt_embeds, negative_prompt_embeds, clip_skip=clip_skip
        )

    def prepare_cameras(self, cameras, batch_size: int, num_views: int, elevation: float, camera_distance: float, fov: float) -> torch.Tensor:
        """cameras: None (a ring of ``num_views`` at ``elevation``), labels [n, 25] / [B, n, 25], or (cam2world, K)."""
        if cameras is None:
            cameras = ring_cameras(num_views, elevation, camera_distance, fov)
        elif isinstance(cameras, (tuple, list)):
            cameras = camera_labels(torch.as_tensor(cameras[0], dtype=torch.float32), torch.as_tensor(cameras[1], dtype=torch.float32))
        cameras = torch.as_tensor(cameras, dtype=torch.float32, device=self._execution_device)
        if cameras.ndim == 2:
            cameras = cameras[None].expand(batch_size, -1, -1)
        if cameras.ndim != 3 or cameras.shape[0] != batch_size or cameras.shape[-1] != 25:
            raise ValueError(f"cameras must have shape [n, 25] or [{batch_size}, n, 25], got {tuple(cameras.shape)}")
        return cameras

    def prepare_extra_step_kwargs(self, generator, eta):
        params = set(inspect.signature(self.scheduler.step).parameters)
        return {k: v for k, v in (("eta", eta), ("generator", generator)) if k in params}

    def decode_latents(self, latents: torch.Tensor, generator=None, view_chunk_size: Optional[int] = None) -> torch.Tensor:
        """x0 latents [N, C, h, w] -> images [N, 3, H, W] in [-1, 1] (identity in pixel space)."""
        if self.vae is None:
            return latents
        c = view_chunk_size or latents.shape[0]
        return torch.cat(
            [self.vae.decode(latents[i : i + c] / self.vae.config.scaling_factor, return_dict=False, generator=generator)[0] for i in range(0, len(latents), c)]
        )

    # ---------------------------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def __call__(
        self,
        prompt: Union[str, List[str], None] = None,
        num_views: int = 8,
        cameras=None,
        height: Optional[int] = None,
        width: Optional[int] = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        negative_prompt: Union[str, List[str], None] = None,
        eta: float = 0.0,
        generator: Union[torch.Generator, List[torch.Generator], None] = None,
        latents: Optional[torch.Tensor] = None,
        prompt_embeds: Optional[torch.Tensor] = None,
        negative_prompt_embeds: Optional[torch.Tensor] = None,
        output_type: str = "pil",
        return_dict: bool = True,
        elevation: float = 20.0,
        camera_distance: float = 2.0,
        fov: float = 40.0,
        conditioning_scale: float = 1.0,
        view_chunk_size: Optional[int] = None,
        ray_chunk_size: Optional[int] = None,
        clip_skip: Optional[int] = None,
    ):
        """Generate ``num_views`` views of one object per prompt, jointly denoised through a NeuS field.

        ``cameras``: None (a ring at ``elevation`` degrees, ``camera_distance`` from the origin, ``fov`` degrees),
        labels [n, 25] or [B, n, 25], or (cam2world [n, 4, 4], K [n, 3, 3]) in the OpenCV convention.
        ``latents``: initial noise [B n, C, h, w] or [B, n, C, h, w]. ``view_chunk_size``: views per pass through
        E, O, the UNet and the VAE (memory); ``ray_chunk_size``: rays per rendering pass.
        """
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"output_type must be 'pil', 'np', 'pt' or 'latent', got {output_type!r}")
        device = self._execution_device
        height = height or self.unet.config.sample_size * self.vae_scale_factor
        width = width or self.unet.config.sample_size * self.vae_scale_factor
        do_cfg = guidance_scale > 1.0

        # 1. text [B, L, D] (negative first under classifier-free guidance, as in Stable Diffusion)
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt, device, do_cfg, negative_prompt, prompt_embeds, negative_prompt_embeds, clip_skip
        )
        B = prompt_embeds.shape[0]
        text = torch.cat([negative_prompt_embeds, prompt_embeds]) if do_cfg else prompt_embeds

        # 2. cameras [B, n, 25], noise [B n, C, h, w]
        if cameras is not None and not isinstance(cameras, (tuple, list)):
            num_views = torch.as_tensor(cameras).shape[-2]
        cameras = self.prepare_cameras(cameras, B, num_views, elevation, camera_distance, fov)
        n = cameras.shape[1]
        shape = (B * n, self.unet.config.in_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=prompt_embeds.dtype)
        else:
            latents = latents.reshape(shape).to(device)
        latents = latents * self.scheduler.init_noise_sigma

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta)
        cams_in = torch.cat([cameras, cameras]) if do_cfg else cameras

        # 3. denoise all views jointly
        for t in self.progress_bar(self.scheduler.timesteps):
            model_input = torch.cat([latents] * 2) if do_cfg else latents
            model_input = self.scheduler.scale_model_input(model_input, t)
            noise_pred, _ = predict_noise(
                self.unet, self.interactive, self.modulation, model_input.unflatten(0, (-1, n)), t, text, cams_in,
                view_chunk_size=view_chunk_size, ray_chunk_size=ray_chunk_size, conditioning_scale=conditioning_scale,
            )
            noise_pred = noise_pred.flatten(0, 1)
            if do_cfg:
                noise_uncond, noise_text = noise_pred.chunk(2)
                noise_pred = noise_uncond + guidance_scale * (noise_text - noise_uncond)
            latents = self.scheduler.step(noise_pred, t, latents, **extra_step_kwargs, return_dict=False)[0]

        # 4. the NeuS field of the clean views (t = 0, the prompt's text), and the images
        features, temb = self.interactive.encode_views(latents.unflatten(0, (B, n)), 0, prompt_embeds, view_chunk_size)
        field = TuneMV3DField(self.interactive, features, cameras, temb)
        if output_type == "latent":
            images = latents
        else:
            images = self.image_processor.postprocess(self.decode_latents(latents, generator, view_chunk_size), output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return images, field, cameras
        return TuneMV3DPipelineOutput(images=images, field=field, cameras=cameras, latents=latents.unflatten(0, (B, n)))

    # ------------------------------------------------------------------------------------------------- shape
    @torch.no_grad()
    def extract_mesh(
        self,
        field,
        resolution: int = 128,
        level: float = 0.0,
        bound: Optional[float] = None,
        output_path: Optional[PathLike] = None,
        index: int = 0,
        chunk: int = 65536,
        views: Optional[torch.Tensor] = None,
        cameras: Optional[torch.Tensor] = None,
    ):
        """Marching cubes on the SDF (negative inside) at ``level`` inside the cube [-bound, bound]^3 (default: the
        renderer's bounding sphere). ``field``: a ``TuneMV3DField`` (object ``index``) or any callable
        points [M, 3] -> sdf [M]. ``views``: the object's sampled images [n, 3, H, W] in [0, 1] (``output_type="pt"``)
        to colour the vertices with (:func:`~my3dgen_hf.tunemv3d.cameras.view_colors`), at ``cameras`` [n, 25]
        (default: the field's). Returns a ``trimesh.Trimesh``; writes PLY/GLB/OBJ/STL when ``output_path`` is given."""
        if isinstance(field, TuneMV3DField):
            field = field[index]
            cameras = field.cameras[0] if cameras is None else cameras
        if views is not None and cameras is None:
            raise ValueError("views need their cameras: pass cameras [n, 25] (or a TuneMV3DField, which has them)")
        bound = float(bound if bound is not None else self.interactive.config.bound)
        device = self._execution_device

        def sdf(points):
            return field(points.to(device)).float()

        # skimage's default gradient direction makes faces point outward for a field that is negative inside.
        volume = sample_grid(sdf, resolution, [-bound] * 3, [bound] * 3, chunk=chunk, device=device)
        mesh = marching_cubes_mesh(volume, level, [-bound] * 3, [bound] * 3)
        if views is not None:
            views, cameras = torch.as_tensor(views).cpu(), torch.as_tensor(cameras).reshape(-1, 25).cpu()
            if views.ndim != 4 or views.shape[1] != 3 or views.shape[0] != cameras.shape[0]:
                raise ValueError(f"views must be [n, 3, H, W] images of the n = {cameras.shape[0]} cameras, got {tuple(views.shape)}")
            rgb = view_colors(torch.tensor(mesh.vertices, dtype=torch.float32), torch.tensor(mesh.vertex_normals, dtype=torch.float32), views, cameras)
            rgba = torch.cat([rgb, torch.ones_like(rgb[:, :1])], 1)
            mesh.visual.vertex_colors = (rgba * 255).round().to(torch.uint8).numpy()
        if output_path is not None:
            export_mesh(mesh, output_path)
        return mesh

    @torch.no_grad()
    def render_orbit(
        self,
        field: TuneMV3DField,
        num_frames: int = 36,
        elevation: float = 20.0,
        camera_distance: float = 2.0,
        fov: float = 40.0,
        index: int = 0,
        frames_per_batch: int = 4,
        ray_chunk_size: Optional[int] = None,
    ) -> np.ndarray:
        """Volume-render the field's x0 on a full turn around the object and decode it: uint8 [F, H, W, 3]."""
        if self.interactive.config.render_target != "x0":
            raise ValueError("this model's field renders features (render_target='features'), not x0: there is nothing to decode")
        field = field[index]
        cams = orbit_cameras(torch.arange(num_frames) * (360.0 / num_frames), elevation, camera_distance, fov, device=field.cameras.device)
        frames = []
        for i in self.progress_bar(range(0, num_frames, frames_per_batch)):
            x0 = field.render(cams[i : i + frames_per_batch], ray_chunk_size=ray_chunk_size)["x0"][0]  # [f, C, h, w]
            frames.append(to_uint8(self.decode_latents(x0.to(self.vae.dtype if self.vae is not None else x0.dtype))))
        return np.concatenate(frames)

    def save_orbit_video(self, path: PathLike, field: TuneMV3DField, fps: int = 12, **orbit_kwargs) -> Path:
        """Write an MP4 orbit of the field (see :meth:`render_orbit`)."""
        return write_video(self.render_orbit(field, **orbit_kwargs), path, fps=fps)
