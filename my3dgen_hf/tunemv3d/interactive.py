"""Interactive diffusion: the view encoder E and the latent NeuS field that couples the n views.

    f_t^i = E(x_t^i, t, c)                     per view: ResBlocks(t) + self-attention + cross-attention(text)
    field = NeuS(f_t^1..n, cameras, t)         mean/variance of the features of the views each point projects into
    x0^j  = render(field, camera_j)            for the n input views (and n' novel views in training)

``render_target="features"`` (config) is the supplement's ablation (Sec. D): the field's head predicts
``render_channels``-dimensional features instead of the latent x0, the renders go to encoder O as they are, and
there is no x0 to supervise them (training drops the render loss). ``render_channels`` defaults to 8 x the latent
channels (32 for Stable Diffusion's 4). The renders keep the name ``x0`` in the outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.utils.checkpoint
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders.peft import PeftAdapterMixin
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from diffusers.utils import BaseOutput
from torch import nn

from .cameras import pixel_rays
from .neus import NeuSField, NeuSRenderer, aggregate_view_features


class ViewEncoder(nn.Module):
    """E: x_t^i [N, C, h, w] -> f_t^i [N, F, h, w] at the latent resolution."""

    def __init__(
        self,
        in_channels: int,
        channels: int,
        num_layers: int,
        out_channels: int,
        temb_channels: int,
        cross_attention_dim: int,
        attention_head_dim: int,
        norm_num_groups: int,
    ):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.resnets = nn.ModuleList(
            [ResnetBlock2D(in_channels=channels, out_channels=channels, temb_channels=temb_channels, groups=norm_num_groups) for _ in range(num_layers)]
        )
        # Transformer2DModel = GroupNorm -> [self-attention, cross-attention to the text, feed-forward] -> residual.
        self.attentions = nn.ModuleList(
            [
                Transformer2DModel(
                    num_attention_heads=channels // attention_head_dim,
                    attention_head_dim=attention_head_dim,
                    in_channels=channels,
                    cross_attention_dim=cross_attention_dim,
                    norm_num_groups=norm_num_groups,
                )
                for _ in range(num_layers)
            ]
        )
        self.norm_out = nn.GroupNorm(norm_num_groups, channels)
        self.conv_out = nn.Conv2d(channels, out_channels, 1)
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor, temb: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for resnet, attn in zip(self.resnets, self.attentions):
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                h = self._gradient_checkpointing_func(resnet, h, temb)
            else:
                h = resnet(h, temb)
            h = attn(h, encoder_hidden_states=text, return_dict=False)[0]
        return self.conv_out(nn.functional.silu(self.norm_out(h)))


@dataclass(eq=False)
class TuneMV3DField:
    """The NeuS field of a batch of B objects, conditioned on their view features (a callable SDF).

    ``field(points [M, 3])`` -> sdf [M] for one object ([B, M] for several); negative inside.
    """

    model: "TuneMV3DInteractiveModel"
    features: torch.Tensor  # [B, n, F, h, w]
    cameras: torch.Tensor  # [B, n, 25]
    temb: torch.Tensor  # [B, T]

    def __len__(self) -> int:
        return self.features.shape[0]

    def __getitem__(self, index: int) -> "TuneMV3DField":
        s = slice(index, index + 1) if index != -1 else slice(-1, None)
        return TuneMV3DField(self.model, self.features[s], self.cameras[s], self.temb[s])

    def sdf(self, points: torch.Tensor) -> torch.Tensor:
        """points [M, 3] or [B, M, 3] -> sdf [B, M]."""
        points = points.to(self.features.device)
        if points.ndim == 2:
            points = points[None].expand(len(self), -1, -1)
        return self.model.query(points, None, self.features, self.cameras, self.temb)[0]

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        sdf = self.sdf(points)
        return sdf[0] if len(self) == 1 else sdf

    def render(self, cameras: torch.Tensor, height: Optional[int] = None, width: Optional[int] = None, ray_chunk_size: Optional[int] = None) -> dict:
        """Render x0, opacity and depth [B, m, *, h, w] from cameras [m, 25] or [B, m, 25]."""
        if cameras.ndim == 2:
            cameras = cameras[None].expand(len(self), -1, -1)
        h, w = self.features.shape[-2:]
        return self.model.render(self.features, self.cameras, self.temb, cameras.to(self.cameras), height or h, width or w, ray_chunk_size=ray_chunk_size)


@dataclass
class TuneMV3DInteractiveOutput(BaseOutput):
    """x0 [B, m, C, h, w] rendered for the input views then the novel ones; opacity, depth [B, m, 1, h, w]."""

    x0: torch.Tensor
    opacity: Optional[torch.Tensor] = None  # defaults let accelerate rebuild the output (fp32 conversion)
    depth: Optional[torch.Tensor] = None
    field: Optional[TuneMV3DField] = None


class TuneMV3DInteractiveModel(ModelMixin, ConfigMixin, PeftAdapterMixin):
    """Encoder E + latent NeuS field + renderer: noisy views x_t [B, n, C, h, w] -> rendered x0 of any views."""

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 4,
        cross_attention_dim: int = 768,
        encoder_channels: int = 128,
        encoder_layers: int = 2,
        attention_head_dim: int = 8,
        norm_num_groups: int = 32,
        feature_channels: int = 32,
        time_embed_dim: int = 256,
        field_hidden_dim: int = 128,
        field_blocks: int = 5,
        num_freqs: int = 6,
        omega: float = 1.5,
        init_radius: float = 0.5,
        num_samples: int = 64,
        num_importance: int = 64,
        up_sample_steps: int = 4,
        bound: float = 1.0,
        init_variance: float = 0.3,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        render_target: str = "x0",
        render_channels: Optional[int] = None,
    ):
        super().__init__()
        if render_target not in ("x0", "features"):
            raise ValueError(f"render_target must be 'x0' or 'features', got {render_target!r}")
        if render_target == "x0" and render_channels not in (None, latent_channels):
            raise ValueError(f"render_target='x0' renders the {latent_channels} latent channels; render_channels={render_channels} needs 'features'")
        # channels of the renders: the latent x0, or the features of the ablation
        self.num_render_channels = latent_channels if render_target == "x0" else int(render_channels or 8 * latent_channels)
        self.time_proj = Timesteps(encoder_channels, flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(encoder_channels, time_embed_dim)
        self.encoder = ViewEncoder(
            latent_channels, encoder_channels, encoder_layers, feature_channels, time_embed_dim, cross_attention_dim, attention_head_dim, norm_num_groups
        )
        self.field = NeuSField(
            feature_channels, time_embed_dim, self.num_render_channels, field_hidden_dim, field_blocks, num_freqs, omega, init_radius
        )
        self.renderer = NeuSRenderer(num_samples, num_importance, up_sample_steps, bound, init_variance)
        self.background = nn.Parameter(torch.zeros(self.num_render_channels))  # the x0 seen where rays miss the object
        self.gradient_checkpointing = False

    @classmethod
    def from_unet(cls, unet, **kwargs) -> "TuneMV3DInteractiveModel":
        """A fresh module sized for ``unet`` (latent channels, text width); ``kwargs`` override the other settings."""
        kwargs.setdefault("latent_channels", unet.config.out_channels)
        kwargs.setdefault("cross_attention_dim", unet.config.cross_attention_dim)
        return cls(**kwargs)

    # ------------------------------------------------------------------------------------------- pieces
    def timestep_embedding(self, timestep: Union[torch.Tensor, float, int], batch: int) -> torch.Tensor:
        t = torch.as_tensor(timestep, device=self.device).reshape(-1).expand(batch)
        return self.time_embedding(self.time_proj(t).to(self.dtype))  # [B, T]

    def encode_views(
        self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor, view_chunk_size: Optional[int] = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x_t [B, n, C, h, w] -> features f_t [B, n, F, h, w] and the timestep embedding [B, T]."""
        B, n = sample.shape[:2]
        temb = self.timestep_embedding(timestep, B)
        x = sample.flatten(0, 1).to(self.dtype)
        temb_v, text_v = temb.repeat_interleave(n, 0), encoder_hidden_states.to(self.dtype).repeat_interleave(n, 0)
        c = view_chunk_size or x.shape[0]
        f = torch.cat([self.encoder(x[i : i + c], temb_v[i : i + c], text_v[i : i + c]) for i in range(0, x.shape[0], c)])
        return f.unflatten(0, (B, n)), temb

    def query(self, points, dirs, features, cameras, temb):
        """The field at points [B, P, 3] (view dirs [B, P, 3] or None) -> sdf [B, P], x0 [B, P, C] or None."""
        condition = torch.cat([aggregate_view_features(points, features, cameras), temb[:, None].expand(-1, points.shape[1], -1)], -1)
        return self.field(points.to(self.dtype), condition.to(self.dtype), None if dirs is None else dirs.to(self.dtype))

    def render(
        self, features, cameras, temb, render_cameras: torch.Tensor, height: int, width: int,
        view_chunk_size: Optional[int] = None, ray_chunk_size: Optional[int] = None,
    ) -> dict:
        """Volume-render the field from render_cameras [B, m, 25] at height x width -> dict of [B, m, *, h, w]."""
        B, m = render_cameras.shape[:2]
        rays_o, rays_d = pixel_rays(render_cameras.float(), height, width)  # [B, m, hw, 3]
        rays_o, rays_d = rays_o.flatten(1, 2), rays_d.flatten(1, 2)  # [B, m hw, 3]

        def field_fn(points, dirs):  # [B, R, S, 3] -> [B, R, S], [B, R, S, C]
            flat_dirs = None if dirs is None else dirs.flatten(1, 2)
            sdf, x0 = self.query(points.flatten(1, 2), flat_dirs, features, cameras, temb)
            return sdf.view(points.shape[:-1]), None if x0 is None else x0.view(*points.shape[:-1], -1)

        def render_chunk(o, d):
            out = self.renderer(field_fn, o, d, self.background)
            return out["values"], out["opacity"], out["depth"]

        chunk = ray_chunk_size or (view_chunk_size or m) * height * width
        outs = []
        for i in range(0, rays_o.shape[1], chunk):
            o, d = rays_o[:, i : i + chunk], rays_d[:, i : i + chunk]
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                outs.append(torch.utils.checkpoint.checkpoint(render_chunk, o, d, use_reentrant=False))
            else:
                outs.append(render_chunk(o, d))
        values, opacity, depth = (torch.cat(x, dim=1) for x in zip(*outs))

        def image(x):  # [B, m hw, c] -> [B, m, c, h, w]
            return x.view(B, m, height, width, -1).permute(0, 1, 4, 2, 3)

        return {"x0": image(values), "opacity": image(opacity[..., None]), "depth": image(depth[..., None])}

    # ------------------------------------------------------------------------------------------- forward
    def forward(
        self,
        sample: torch.Tensor,
        timestep,
        encoder_hidden_states: torch.Tensor,
        cameras: torch.Tensor,
        novel_cameras: Optional[torch.Tensor] = None,
        view_chunk_size: Optional[int] = None,
        ray_chunk_size: Optional[int] = None,
        return_dict: bool = True,
    ):
        """x_t [B, n, C, h, w], t [B] or scalar, text [B, L, D], cameras [B, n, 25], novel [B, n', 25]
        -> x0 rendered for the n input views followed by the n' novel views, [B, n + n', C, h, w]."""
        features, temb = self.encode_views(sample, timestep, encoder_hidden_states, view_chunk_size)
        render_cameras = cameras if novel_cameras is None else torch.cat([cameras, novel_cameras.to(cameras)], dim=1)
        h, w = sample.shape[-2:]
        out = self.render(features, cameras, temb, render_cameras, h, w, view_chunk_size, ray_chunk_size)
        field = TuneMV3DField(self, features, cameras, temb)
        if not return_dict:
            return out["x0"], out["opacity"], out["depth"], field
        return TuneMV3DInteractiveOutput(x0=out["x0"], opacity=out["opacity"], depth=out["depth"], field=field)
