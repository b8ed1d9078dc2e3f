"""LoRA for TuneMV3D pipelines: diffusers' Stable Diffusion loader for the UNet and text encoder, extended to the
interactive and modulation modules (both ``PeftAdapterMixin`` models, adapters added with PEFT ``LoraConfig``).

One safetensors file holds every component's layers, prefixed ``unet.``, ``text_encoder.``, ``interactive.``
and ``modulation.``; ``set_adapters``, ``fuse_lora``, ``unfuse_lora``, ``disable_lora``, ``delete_adapters``
come from diffusers' ``LoraBaseMixin`` and act on all four.
"""

from __future__ import annotations

import os
from typing import Callable, Optional

import torch
from diffusers.loaders import StableDiffusionLoraLoaderMixin

LORA_COMPONENTS = ["unet", "text_encoder", "interactive", "modulation"]


class TuneMV3DLoraLoaderMixin(StableDiffusionLoraLoaderMixin):
    _lora_loadable_modules = list(LORA_COMPONENTS)

    def load_lora_weights(self, pretrained_model_name_or_path_or_dict, adapter_name: Optional[str] = None, hotswap: bool = False, **kwargs):
        """Load a LoRA file (or state dict) into whichever components it has layers for. Pass ``weight_name`` for
        a Hub repository (otherwise the Hub is asked to list its files)."""
        if isinstance(pretrained_model_name_or_path_or_dict, dict):
            pretrained_model_name_or_path_or_dict = pretrained_model_name_or_path_or_dict.copy()
        low_cpu_mem_usage = kwargs.pop("low_cpu_mem_usage", False)
        state_dict, network_alphas, metadata = self.lora_state_dict(pretrained_model_name_or_path_or_dict, return_lora_metadata=True, **kwargs)
        if not all("lora" in key for key in state_dict):
            raise ValueError("Invalid LoRA checkpoint: every parameter name must contain 'lora'.")
        prefixes = {key.split(".", 1)[0] for key in state_dict}
        if adapter_name is None:  # one name across components, so set_adapters(name) reaches all of them
            existing = {a for adapters in self.get_list_adapters().values() for a in adapters}
            adapter_name = next(f"default_{i}" for i in range(len(existing) + 1) if f"default_{i}" not in existing)
        common = dict(adapter_name=adapter_name, _pipeline=self, low_cpu_mem_usage=low_cpu_mem_usage, hotswap=hotswap, metadata=metadata)
        if "unet" in prefixes:
            self.load_lora_into_unet(state_dict, network_alphas=network_alphas, unet=self.unet, **common)
        if "text_encoder" in prefixes:
            self.load_lora_into_text_encoder(state_dict, network_alphas=network_alphas, text_encoder=self.text_encoder, lora_scale=self.lora_scale, **common)
        for name in ("interactive", "modulation"):
            if name in prefixes:
                getattr(self, name).load_lora_adapter(state_dict, prefix=name, network_alphas=network_alphas, **common)

    @classmethod
    def save_lora_weights(
        cls,
        save_directory: str | os.PathLike,
        unet_lora_layers: Optional[dict] = None,
        text_encoder_lora_layers: Optional[dict] = None,
        interactive_lora_layers: Optional[dict] = None,
        modulation_lora_layers: Optional[dict] = None,
        is_main_process: bool = True,
        weight_name: Optional[str] = None,
        save_function: Optional[Callable] = None,
        safe_serialization: bool = True,
        unet_lora_adapter_metadata: Optional[dict] = None,
        text_encoder_lora_adapter_metadata: Optional[dict] = None,
        interactive_lora_adapter_metadata: Optional[dict] = None,
        modulation_lora_adapter_metadata: Optional[dict] = None,
    ):
        """Save LoRA layers (e.g. ``peft.utils.get_peft_model_state_dict(pipe.interactive)``) of any components."""
        given = {
            "unet": (unet_lora_layers, unet_lora_adapter_metadata),
            "text_encoder": (text_encoder_lora_layers, text_encoder_lora_adapter_metadata),
            "interactive": (interactive_lora_layers, interactive_lora_adapter_metadata),
            "modulation": (modulation_lora_layers, modulation_lora_adapter_metadata),
        }
        layers = {name: layer for name, (layer, _) in given.items() if layer}
        if not layers:
            raise ValueError("pass the LoRA layers of at least one of unet, text_encoder, interactive, modulation")
        cls._save_lora_weights(
            save_directory=save_directory,
            lora_layers=layers,
            lora_metadata={name: meta for name, (layer, meta) in given.items() if layer},
            is_main_process=is_main_process,
            weight_name=weight_name,
            save_function=save_function,
            safe_serialization=safe_serialization,
        )

    def save_lora_adapter_weights(self, save_directory: str | os.PathLike, adapter_name: str = "default", weight_name: Optional[str] = None):
        """Save adapter ``adapter_name`` of every component that has it (with its ``LoraConfig`` as metadata)."""
        from peft.utils import get_peft_model_state_dict

        kwargs = {}
        for name in self._lora_loadable_modules:
            model = getattr(self, name, None)
            if model is not None and adapter_name in (getattr(model, "peft_config", None) or {}):
                kwargs[f"{name}_lora_layers"] = get_peft_model_state_dict(model, adapter_name=adapter_name)
                kwargs[f"{name}_lora_adapter_metadata"] = model.peft_config[adapter_name].to_dict()
        if not kwargs:
            raise ValueError(f"no component has an adapter named {adapter_name!r}")
        self.save_lora_weights(save_directory, weight_name=weight_name, **kwargs)

    def fuse_lora(self, components: list[str] = LORA_COMPONENTS, lora_scale: float = 1.0, safe_fusing: bool = False, adapter_names=None, **kwargs):
        """Merge the active adapters into the weights of ``components`` (all four by default)."""
        components = [c for c in components if getattr(self, c, None) is not None and _has_lora(getattr(self, c))]
        super().fuse_lora(components=components, lora_scale=lora_scale, safe_fusing=safe_fusing, adapter_names=adapter_names, **kwargs)

    def unfuse_lora(self, components: list[str] = LORA_COMPONENTS, **kwargs):
        super().unfuse_lora(components=[c for c in components if getattr(self, c, None) is not None], **kwargs)


def _has_lora(model: torch.nn.Module) -> bool:
    return bool(getattr(model, "peft_config", None)) or any("lora" in n for n, _ in model.named_parameters())
