"""Adapter helpers for EG3DGenerator + LoRA: extras (non-LoRA trainable tensors), adapter state dicts, merging and
unloading on diffusers models, and trainable-parameter counts."""

from __future__ import annotations

import re
import warnings
from collections import OrderedDict
from collections.abc import Iterable

import torch
from peft import LoraConfig
from peft.tuners.lora.model import LoraModel
from peft.tuners.tuners_utils import (
    BaseTunerLayer,
    _filter_state_dict_by_key_prefixes,
    _get_tuner_state_dict_key_prefixes,
)
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from peft.utils.other import _get_submodules
from torch import nn

from .layers import EG3DLoraLayer

PEFT_PREFIX = "base_model.model."


# ---------------------------------------------------------------------------------------------------------------------
# structure


def _top_level_tuner_layers(model: nn.Module) -> list[tuple[str, BaseTunerLayer]]:
    """(name, layer) of the tuner layers that are not nested inside another tuner layer."""
    out, inside = [], []
    for name, module in model.named_modules():
        if any(name.startswith(p + ".") for p in inside):
            continue
        if isinstance(module, BaseTunerLayer):
            out.append((name, module))
            inside.append(name)
    return out


def lora_layers(model: nn.Module) -> list[tuple[str, EG3DLoraLayer]]:
    """(module name, layer) of every EG3D LoRA layer in ``model``."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, EG3DLoraLayer)]


def original_name(model: nn.Module, name: str) -> str:
    """The name a parameter/module has in the plain model: drops the ``base_layer`` infix of tuner layers."""
    parts, out, current = name.split("."), [], model
    for part in parts:
        child = current._modules.get(part) if current is not None else None
        if child is None:
            out.append(part)
            current = None
        elif part == "base_layer" and isinstance(current, BaseTunerLayer):
            current = child
        else:
            out.append(part)
            current = child
    return ".".join(out)


def _lora_param_names(model: nn.Module) -> set[str]:
    prefixes = _get_tuner_state_dict_key_prefixes(model)
    return set(_filter_state_dict_by_key_prefixes(dict(model.named_parameters()), prefixes))


def _all_adapter_names(model: nn.Module) -> list[str]:
    names = list(getattr(model, "peft_config", {}) or {})
    for _, layer in lora_layers(model):
        for a in layer.lora_A:
            if a not in names:
                names.append(a)
    return names


# ---------------------------------------------------------------------------------------------------------------------
# extras


def _layer_extras(model: nn.Module, name: str, layer: EG3DLoraLayer) -> OrderedDict[str, nn.Parameter]:
    base = layer.get_base_layer()
    out = OrderedDict()
    if getattr(base, "bias", None) is not None:
        out[f"{name}.bias"] = base.bias
    if isinstance(getattr(base, "noise_strength", None), nn.Parameter):
        out[f"{name}.noise_strength"] = base.noise_strength
    affine = getattr(base, "affine", None)
    if affine is not None and getattr(affine, "bias", None) is not None:
        out[f"{name}.affine.bias"] = affine.bias
    parent_name = name.rpartition(".")[0]
    parent = model.get_submodule(parent_name) if parent_name else model
    if isinstance(getattr(parent, "const", None), nn.Parameter):
        out[f"{parent_name}.const" if parent_name else "const"] = parent.const
    return out


def _extras(model: nn.Module, adapter_names: Iterable[str], respect_flags: bool) -> OrderedDict[str, nn.Parameter]:
    adapter_names = list(adapter_names)
    out = OrderedDict()
    for name, layer in lora_layers(model):
        for a in adapter_names:
            if a in layer.lora_A and (not respect_flags or layer.train_extras.get(a, False)):
                out.update(_layer_extras(model, original_name(model, name), layer))
                break
    return out


def extra_parameters(model: nn.Module, adapter_name: str | None = None) -> OrderedDict[str, nn.Parameter]:
    """Extras of ``adapter_name`` (or of every adapter) that was added with ``train_extras=True``, by plain-model name.

    Extras of a LoRA-targeted layer: its ``bias``, ``noise_strength`` and ``affine.bias``; plus the ``const`` of the
    synthesis block holding it (``backbone.synthesis.b4.const``). They are base parameters, shared by all adapters.
    """
    names = _all_adapter_names(model) if adapter_name is None else [adapter_name]
    return _extras(model, names, respect_flags=True)


def extra_trainable_parameter_names(model: nn.Module, adapter_name: str | None = None) -> list[str]:
    """Plain-model names (``backbone.synthesis.b8.conv0.bias``, ...) of :func:`extra_parameters`."""
    return list(extra_parameters(model, adapter_name))


def _train_extras_flag(config_or_flags) -> bool:
    if isinstance(config_or_flags, bool):
        return config_or_flags
    if isinstance(config_or_flags, LoraConfig):
        return bool(getattr(config_or_flags, "train_extras", False))
    if isinstance(config_or_flags, dict) and "train_extras" in config_or_flags:
        return bool(config_or_flags["train_extras"])
    raise TypeError(f"expected a bool, a LoraConfig or a metadata dict with 'train_extras', got {type(config_or_flags)}")


def mark_extras_trainable(model: nn.Module, config_or_flags=True, adapter_name: str | list[str] | None = None) -> list[str]:
    """Set ``requires_grad`` of the extras of the layers targeted by ``adapter_name`` (default: the active adapters)
    to the ``train_extras`` flag (a bool, a config or metadata dict). Call it after ``add_adapter``, which freezes
    every non-LoRA parameter. Returns the plain-model names of the extras."""
    flag = _train_extras_flag(config_or_flags)
    if adapter_name is None:
        layers = lora_layers(model)
        names = list(layers[0][1].active_adapters) if layers else []
    else:
        names = [adapter_name] if isinstance(adapter_name, str) else list(adapter_name)
    extras = _extras(model, names, respect_flags=False)
    for p in extras.values():
        p.requires_grad_(flag)
    return list(extras)


def add_my3dgen_adapter(model: nn.Module, config: LoraConfig, adapter_name: str = "default") -> nn.Module:
    """``model.add_adapter(config, adapter_name)`` (diffusers ``PeftAdapterMixin``; makes it the active adapter) plus
    :func:`mark_extras_trainable` with the config's ``train_extras``. ``config`` may also be a metadata dict."""
    from .config import config_from_metadata
    from .layers import register_eg3d_lora_layers

    if isinstance(config, dict):
        config = config_from_metadata(config)
    register_eg3d_lora_layers(config)
    with warnings.catch_warnings():
        # PEFT's tuner warns about the `peft_config` attribute diffusers keeps on the model when adding a 2nd adapter
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute in the model")
        model.add_adapter(config, adapter_name=adapter_name)
    if getattr(config, "train_extras", False):
        mark_extras_trainable(model, True, adapter_name)
    return model


# ---------------------------------------------------------------------------------------------------------------------
# adapter state dicts


def _expected_lora_keys(model: nn.Module, adapter_name: str) -> dict[str, str]:
    """checkpoint key (adapter name removed) -> model key, as PEFT's ``set_peft_model_state_dict`` maps them."""
    prefixes = _get_tuner_state_dict_key_prefixes(model, adapter_name=adapter_name)
    keys = _filter_state_dict_by_key_prefixes(model.state_dict(), prefixes)
    return {LoraModel._remove_adapter_name_from_key(k, adapter_name): k for k in keys}


def get_adapter_state_dict(model: nn.Module, adapter_name: str = "default", include_extras: bool = True) -> dict[str, torch.Tensor]:
    """PEFT's ``get_peft_model_state_dict(model, adapter_name=...)`` (keys like ``backbone.synthesis.b8.conv0.lora_A.weight``,
    ``...conv0.lora_affine_B.weight``) plus, when the adapter was added with ``train_extras=True``, the extras under their
    plain-model names (``backbone.synthesis.b8.conv0.bias``, ``backbone.synthesis.b4.const``, ...).
    ``include_extras=False`` returns the LoRA factors only."""
    if adapter_name not in (getattr(model, "peft_config", None) or {}):
        raise ValueError(f"adapter {adapter_name!r} not found; loaded adapters: {list(getattr(model, 'peft_config', {}) or {})}")
    state = dict(get_peft_model_state_dict(model, adapter_name=adapter_name))
    if not include_extras:
        return state
    for name, p in extra_parameters(model, adapter_name).items():
        if name in state:
            raise RuntimeError(f"extra parameter {name!r} collides with a LoRA key")
        state[name] = p.detach()
    return state


def set_adapter_state_dict(
    model: nn.Module,
    state_dict: dict[str, torch.Tensor],
    adapter_name: str = "default",
    config=None,
    strict: bool = True,
) -> dict[str, list[str]]:
    """Load :func:`get_adapter_state_dict` output into ``model``'s adapter ``adapter_name``.

    If the adapter does not exist yet, ``config`` (a LoraConfig or metadata dict) is used to add it first
    (:func:`add_my3dgen_adapter`). LoRA keys go through PEFT's ``set_peft_model_state_dict`` (adapter name inserted);
    the remaining keys must be plain-model names of base parameters (the extras) and are copied into the model.
    Extras are shared by all adapters: the last adapter loaded wins (warns when another adapter also carries extras).
    With ``strict``, missing LoRA keys and unknown keys raise. Returns ``missing_keys`` / ``unexpected_keys`` / ``extras``.
    """
    if adapter_name not in (getattr(model, "peft_config", None) or {}):
        if config is None:
            raise ValueError(f"adapter {adapter_name!r} not found in the model: add it first or pass `config`")
        add_my3dgen_adapter(model, config, adapter_name)
    expected = _expected_lora_keys(model, adapter_name)
    lora_sd, rest = {}, {}
    for k, v in state_dict.items():
        kk = k.removeprefix(PEFT_PREFIX)
        (lora_sd if kk in expected else rest)[kk] = v
    missing = sorted(set(expected) - set(lora_sd))
    lora_names = _lora_param_names(model)
    base_params = {original_name(model, n): p for n, p in model.named_parameters() if n not in lora_names}
    unexpected = sorted(k for k in rest if k not in base_params)
    if strict and (missing or unexpected):
        raise RuntimeError(f"adapter state dict mismatch: missing LoRA keys {missing[:8]}{'...' if len(missing) > 8 else ''}, unexpected keys {unexpected[:8]}")
    set_peft_model_state_dict(model, lora_sd, adapter_name=adapter_name)
    extras = [k for k in rest if k in base_params]
    if extras:
        others = [a for a in _all_adapter_names(model) if a != adapter_name and extra_parameters(model, a)]
        if others:
            warnings.warn(
                f"loading the extras of adapter {adapter_name!r} overwrites the shared extras of {others} (last one wins)"
            )
        with torch.no_grad():
            for k in extras:
                p = base_params[k]
                if p.shape != rest[k].shape:
                    raise RuntimeError(f"shape mismatch for {k}: checkpoint {tuple(rest[k].shape)}, model {tuple(p.shape)}")
                p.copy_(rest[k].to(device=p.device, dtype=p.dtype))
    return {"missing_keys": missing, "unexpected_keys": unexpected, "extras": extras}


# ---------------------------------------------------------------------------------------------------------------------
# merge / unload on plain (diffusers) models


def _unload(model: nn.Module, merge: bool, safe_merge: bool = False, adapter_names: list[str] | None = None) -> nn.Module:
    # children before parents, so that tuner layers nested in another one's base_layer are unloaded too
    names = [n for n, m in model.named_modules() if isinstance(m, BaseTunerLayer) and hasattr(m, "base_layer")]
    for name in reversed(names):
        parent, target, target_name = _get_submodules(model, name)
        if merge:
            target.merge(safe_merge=safe_merge, adapter_names=adapter_names)
        setattr(parent, target_name, target.get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config
    if hasattr(model, "_hf_peft_config_loaded"):
        model._hf_peft_config_loaded = False
    return model


def merge_and_unload(model: nn.Module, adapter_names: list[str] | None = None, safe_merge: bool = False) -> nn.Module:
    """Like PEFT's ``LoraModel.merge_and_unload`` for a model with injected adapters (diffusers ``add_adapter``):
    merges ``adapter_names`` (default: the active adapters, with their current ``set_adapters`` weights) into the base
    weights, style affines included, and puts the plain layers back. In place; returns ``model``."""
    return _unload(model, merge=True, safe_merge=safe_merge, adapter_names=adapter_names)


def unload(model: nn.Module) -> nn.Module:
    """Remove every LoRA layer without merging (extras keep their current values). In place; returns ``model``."""
    return _unload(model, merge=False)


# ---------------------------------------------------------------------------------------------------------------------
# counting

_BLOCK_PATTERNS = (
    (re.compile(r"(?:^|\.)backbone\.synthesis\.(b\d+)\."), "synthesis.{}"),
    (re.compile(r"(?:^|\.)superresolution\.(block\d+)\."), "superresolution.{}"),
    (re.compile(r"(?:^|\.)backbone\.mapping\."), "mapping"),
    (re.compile(r"(?:^|\.)decoder\."), "decoder"),
)


def _block_of(name: str) -> str:
    for pattern, fmt in _BLOCK_PATTERNS:
        m = pattern.search(name)
        if m:
            return fmt.format(*m.groups())
    return "other"


def count_trainable_parameters(model: nn.Module) -> dict:
    """Trainable (``requires_grad``) parameter counts: ``total``, ``lora`` (adapter factors), ``extras`` (trainable base
    parameters), ``frozen``, ``base_total`` (all non-LoRA parameters) and ``blocks``: ``{"synthesis.b4": {"lora",
    "extras", "total"}, ..., "superresolution.block0": ..., "mapping": ..., "decoder": ..., "other": ...}``."""
    lora_names = _lora_param_names(model)
    counts = {"total": 0, "lora": 0, "extras": 0, "frozen": 0, "base_total": 0, "blocks": {}}
    for name, p in model.named_parameters():
        n = p.numel()
        is_lora = name in lora_names
        if not is_lora:
            counts["base_total"] += n
        if not p.requires_grad:
            counts["frozen"] += n
            continue
        kind = "lora" if is_lora else "extras"
        counts["total"] += n
        counts[kind] += n
        block = counts["blocks"].setdefault(_block_of(original_name(model, name)), {"lora": 0, "extras": 0, "total": 0})
        block[kind] += n
        block["total"] += n
    return counts
