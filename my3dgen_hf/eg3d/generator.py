"""EG3D tri-plane generator as a diffusers model: StyleGAN2 backbone -> tri-planes -> OSGDecoder -> importance
volume rendering -> super-resolution. State-dict compatible with the released ``G_ema`` checkpoints."""

from __future__ import annotations

import copy
from typing import Optional

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders.peft import PeftAdapterMixin
from diffusers.models.modeling_utils import ModelMixin

from .decoder import OSGDecoder
from .renderer import ImportanceRenderer, RaySampler
from .superresolution import Superresolution
from .synthesis import StyleGAN2Backbone

# The released FFHQ rendering settings; any key given in ``rendering_kwargs`` overrides these.
FFHQ_RENDERING_KWARGS = {
    "image_resolution": 512,
    "disparity_space_sampling": False,
    "clamp_mode": "softplus",
    "superresolution_module": "training.superresolution.SuperresolutionHybrid8XDC",
    "c_gen_conditioning_zero": False,
    "gpc_reg_prob": 0.5,
    "c_scale": 1.0,
    "superresolution_noise_mode": "none",
    "density_reg": 0.25,
    "density_reg_p_dist": 0.004,
    "reg_type": "l1",
    "decoder_lr_mul": 1.0,
    "sr_antialias": True,
    "depth_resolution": 48,
    "depth_resolution_importance": 48,
    "ray_start": 2.25,
    "ray_end": 3.3,
    "box_warp": 1,
    "avg_camera_radius": 2.7,
    "avg_camera_pivot": [0, 0, 0.2],
}

TRIPLANE_CHANNELS = 32


class EG3DGenerator(ModelMixin, ConfigMixin, PeftAdapterMixin):
    """``EG3DGenerator(**G.init_kwargs)`` builds the original ``TriPlaneGenerator`` structure.

    Beyond the original arguments: ``neural_rendering_resolution`` (an attribute set after construction in the
    original) and ``triplane_resolution`` (fixed at 256 in the original; smaller values make small priors cheap).

    Inference defaults are deterministic: ``noise_mode=None`` means 'const' in eval mode ('random' in train
    mode) and ``deterministic=None`` means no ray jitter and deterministic importance sampling in eval mode.
    """

    config_name = "config.json"
    # Released checkpoints carry a training-time buffer that the constructor does not create.
    _keys_to_ignore_on_load_unexpected = [r"dataset_label_std"]

    @register_to_config
    def __init__(
        self,
        z_dim: int = 512,
        c_dim: int = 25,
        w_dim: int = 512,
        img_resolution: int = 512,
        img_channels: int = 3,
        sr_num_fp16_res: int = 0,
        mapping_kwargs: Optional[dict] = None,
        rendering_kwargs: Optional[dict] = None,
        sr_kwargs: Optional[dict] = None,
        neural_rendering_resolution: int = 64,
        channel_base: int = 32768,
        channel_max: int = 512,
        num_fp16_res: int = 4,
        conv_clamp: Optional[float] = 256,
        fused_modconv_default="inference_only",
        architecture: str = "skip",
        triplane_resolution: int = 256,
    ):
        super().__init__()
        if img_channels != 3:
            raise ValueError(f"EG3D renders RGB images: img_channels must be 3, got {img_channels}")
        self.rendering_kwargs = {**FFHQ_RENDERING_KWARGS, **(rendering_kwargs or {})}
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.neural_rendering_resolution = neural_rendering_resolution
        self.ray_sampler = RaySampler()
        self.renderer = ImportanceRenderer()
        self.backbone = StyleGAN2Backbone(
            z_dim,
            c_dim,
            w_dim,
            img_resolution=triplane_resolution,  # 256 in every released model; smaller for the demo prior
            img_channels=3 * TRIPLANE_CHANNELS,
            mapping_kwargs=mapping_kwargs,
            channel_base=channel_base,
            channel_max=channel_max,
            num_fp16_res=num_fp16_res,
            conv_clamp=conv_clamp,
            fused_modconv_default=fused_modconv_default,
            architecture=architecture,
        )
        self.superresolution = Superresolution(
            self.rendering_kwargs["superresolution_module"],
            channels=TRIPLANE_CHANNELS,
            img_resolution=img_resolution,
            sr_num_fp16_res=sr_num_fp16_res,
            sr_antialias=self.rendering_kwargs["sr_antialias"],
            w_dim=w_dim,
            **copy.deepcopy(sr_kwargs or {}),
        )
        self.decoder = OSGDecoder(
            TRIPLANE_CHANNELS, output_dim=TRIPLANE_CHANNELS, lr_multiplier=self.rendering_kwargs.get("decoder_lr_mul", 1)
        )

    @property
    def num_ws(self) -> int:
        return self.backbone.num_ws

    def _defaults(self, noise_mode, deterministic):
        if noise_mode is None:
            noise_mode = "random" if self.training else "const"
        if deterministic is None:
            deterministic = not self.training
        return noise_mode, deterministic

    def mapping(
        self,
        z: torch.Tensor,  # [N, z_dim]
        c: torch.Tensor,  # [N, 25] conditioning camera
        truncation_psi: float = 1.0,
        truncation_cutoff: Optional[int] = None,
        update_emas: bool = False,
    ) -> torch.Tensor:  # ws [N, num_ws, w_dim]
        if self.rendering_kwargs["c_gen_conditioning_zero"]:
            c = torch.zeros_like(c)
        # The original multiplies by c_scale with a default of 0 when the key is missing.
        c = c * self.rendering_kwargs.get("c_scale", 0)
        return self.backbone.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff, update_emas=update_emas)

    def synthesize_planes(self, ws: torch.Tensor, noise_mode: Optional[str] = None, **block_kwargs) -> torch.Tensor:
        """ws [N, num_ws, w_dim] -> tri-planes [N, 3, 32, 256, 256]."""
        noise_mode, _ = self._defaults(noise_mode, None)
        planes = self.backbone.synthesis(ws, noise_mode=noise_mode, **block_kwargs)  # [N, 96, 256, 256]
        return planes.view(len(planes), 3, TRIPLANE_CHANNELS, planes.shape[-2], planes.shape[-1])

    def render_planes(
        self,
        planes: torch.Tensor,  # [N, 3, 32, H, W]
        ws: torch.Tensor,  # [N, num_ws, w_dim] (the SR blocks use the last w)
        c: torch.Tensor,  # [N, 25] rendering camera
        neural_rendering_resolution: Optional[int] = None,
        deterministic: Optional[bool] = None,
        **block_kwargs,
    ) -> dict[str, torch.Tensor]:
        _, deterministic = self._defaults(None, deterministic)
        block_kwargs.pop("noise_mode", None)  # the SR uses its own noise mode from rendering_kwargs
        res = neural_rendering_resolution or self.neural_rendering_resolution
        cam2world, intrinsics = c[:, :16].view(-1, 4, 4), c[:, 16:25].view(-1, 3, 3)
        ray_origins, ray_directions = self.ray_sampler(cam2world, intrinsics, res)
        n = ray_origins.shape[0]
        features, depth, _ = self.renderer(
            planes, self.decoder, ray_origins, ray_directions, self.rendering_kwargs, deterministic=deterministic
        )
        feature_image = features.permute(0, 2, 1).reshape(n, features.shape[-1], res, res).contiguous()  # [N, 32, r, r]
        depth_image = depth.permute(0, 2, 1).reshape(n, 1, res, res)
        rgb_image = feature_image[:, :3]
        image, raw_image = self.superresolution(
            rgb_image, feature_image, ws, noise_mode=self.rendering_kwargs["superresolution_noise_mode"], **block_kwargs
        )
        if not self.rendering_kwargs.get("reproduce_raw_aliasing", True):
            raw_image = rgb_image  # the plain volume-rendered RGB (see Superresolution.forward)
        return {"image": image, "image_raw": raw_image, "image_depth": depth_image}

    def synthesis(
        self,
        ws: torch.Tensor,
        c: torch.Tensor,
        neural_rendering_resolution: Optional[int] = None,
        noise_mode: Optional[str] = None,
        deterministic: Optional[bool] = None,
        **block_kwargs,
    ) -> dict[str, torch.Tensor]:
        """ws [N, num_ws, w_dim], rendering camera c [N, 25] -> ``image`` [N, 3, R, R], ``image_raw`` [N, 3, r, r],
        ``image_depth`` [N, 1, r, r]."""
        planes = self.synthesize_planes(ws, noise_mode=noise_mode, **block_kwargs)
        return self.render_planes(planes, ws, c, neural_rendering_resolution, deterministic, **block_kwargs)

    def forward(
        self,
        z: torch.Tensor,
        c: torch.Tensor,
        truncation_psi: float = 1.0,
        truncation_cutoff: Optional[int] = None,
        neural_rendering_resolution: Optional[int] = None,
        noise_mode: Optional[str] = None,
        deterministic: Optional[bool] = None,
        update_emas: bool = False,
        **block_kwargs,
    ) -> dict[str, torch.Tensor]:
        """As the original: ``c`` both conditions the mapping and places the camera."""
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff, update_emas=update_emas)
        return self.synthesis(
            ws, c, neural_rendering_resolution=neural_rendering_resolution, noise_mode=noise_mode, deterministic=deterministic, **block_kwargs
        )

    def sample_mixed(
        self,
        coordinates: torch.Tensor,  # [N, M, 3]
        directions: torch.Tensor,  # [N, M, 3]
        ws: torch.Tensor,
        noise_mode: Optional[str] = None,
        planes: Optional[torch.Tensor] = None,
        **block_kwargs,
    ) -> dict[str, torch.Tensor]:
        """Decoder outputs at 3-D points: ``sigma`` [N, M, 1] (raw density) and ``rgb`` [N, M, 32] features."""
        if planes is None:
            planes = self.synthesize_planes(ws, noise_mode=noise_mode, **block_kwargs)
        return self.renderer.run_model(planes, self.decoder, coordinates, directions, self.rendering_kwargs)

    def sample(self, coordinates, directions, z, c, truncation_psi: float = 1.0, truncation_cutoff=None, **block_kwargs):
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.sample_mixed(coordinates, directions, ws, **block_kwargs)
