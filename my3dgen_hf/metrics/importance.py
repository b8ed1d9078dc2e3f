"""Per-block weight-change importance, ``|dW|_F / |W0|_F`` (the paper's Fig. 9).

For each synthesis block of the tri-plane StyleGAN2 backbone (``backbone.synthesis.b4`` ... ``b256``) and each
super-resolution block (``superresolution.block0``, ``block1``), the Frobenius norm of the change of all its
weight tensors (conv, toRGB and style-affine ``.weight`` entries by default), concatenated, divided by the
Frobenius norm of the base weights. Inputs are a base state dict and a tuned one (full fine-tuning, or a LoRA
model with its deltas merged: :func:`lora_merged_state_dicts`).
"""

from __future__ import annotations

import copy
import math
import os
import re
from collections import OrderedDict
from typing import Callable, Iterable, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

__all__ = [
    "weight_change_ratios",
    "per_tensor_change_ratios",
    "detect_blocks",
    "normalize_state_dict_keys",
    "lora_merged_state_dicts",
    "lora_importance",
    "plot_importance",
    "block_label",
]

StateDict = Mapping[str, torch.Tensor]

_BLOCK_RE = re.compile(r"^(backbone\.synthesis\.b(\d+)|superresolution\.block(\d+))\.")


def default_param_filter(key: str) -> bool:
    """Weights only (conv, toRGB, affine): skips biases, ``noise_strength``, ``const`` and buffers."""
    return key.endswith(".weight")


def normalize_state_dict_keys(sd: StateDict) -> OrderedDict[str, torch.Tensor]:
    """Drop LoRA tensors and wrapper path components so keys match the plain generator's.

    Strips ``module.`` / ``base_model.model.`` prefixes and PEFT's ``.base_layer`` segment, and drops keys
    containing ``lora_`` (PEFT ``lora_A``/``lora_B``/...).
    """
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for k, v in sd.items():
        if "lora_" in k:
            continue
        for pre in ("module.", "base_model.model."):
            k = k.removeprefix(pre)
        k = k.replace(".base_layer.", ".")
        out[k] = v
    return out


def detect_blocks(keys: Iterable[str]) -> Tuple[str, ...]:
    """Block prefixes present in ``keys``, synthesis blocks by resolution then SR blocks."""
    syn, sr = set(), set()
    for k in keys:
        m = _BLOCK_RE.match(k)
        if m:
            (syn if m.group(2) else sr).add(m.group(1))
    syn_sorted = sorted(syn, key=lambda b: int(b.rsplit(".b", 1)[1]))
    sr_sorted = sorted(sr, key=lambda b: int(b.rsplit("block", 1)[1]))
    return tuple(syn_sorted + sr_sorted)


def block_label(block: str) -> str:
    """Short plot label: ``backbone.synthesis.b64`` -> ``b64``, ``superresolution.block0`` -> ``SR0``."""
    if block.startswith("superresolution.block"):
        return "SR" + block.rsplit("block", 1)[1]
    return block.rsplit(".", 1)[-1]


def _pairs(base: StateDict, tuned: StateDict, prefix: str, param_filter: Callable[[str], bool]):
    for k, w0 in base.items():
        if not k.startswith(prefix + ".") or not param_filter(k):
            continue
        if k not in tuned:
            raise KeyError(f"{k} is in the base state dict but not in the tuned one (normalize keys first?)")
        w1 = tuned[k]
        if w1.shape != w0.shape:
            raise ValueError(f"{k}: shape {tuple(w0.shape)} in base vs {tuple(w1.shape)} in tuned")
        yield k, w0.detach().double().cpu(), w1.detach().double().cpu()


def weight_change_ratios(
    base: StateDict,
    tuned: StateDict,
    blocks: Optional[Sequence[str]] = None,
    param_filter: Callable[[str], bool] = default_param_filter,
) -> OrderedDict[str, float]:
    """``{block: |W_tuned - W_base|_F / |W_base|_F}`` over each block's weights (concatenated).

    Keys are normalised with :func:`normalize_state_dict_keys` first. ``blocks`` defaults to every
    ``backbone.synthesis.b<res>`` and ``superresolution.block<i>`` found in ``base``.
    """
    base = normalize_state_dict_keys(base)
    tuned = normalize_state_dict_keys(tuned)
    blocks = tuple(blocks) if blocks is not None else detect_blocks(base)
    out: OrderedDict[str, float] = OrderedDict()
    for b in blocks:
        num = den = 0.0
        found = False
        for _, w0, w1 in _pairs(base, tuned, b, param_filter):
            found = True
            num += float((w1 - w0).pow(2).sum())
            den += float(w0.pow(2).sum())
        if not found:
            raise KeyError(f"no weights under block {b!r} in the base state dict")
        out[b] = math.sqrt(num) / math.sqrt(den) if den > 0 else math.inf
    return out


def per_tensor_change_ratios(
    base: StateDict, tuned: StateDict, param_filter: Callable[[str], bool] = default_param_filter
) -> OrderedDict[str, float]:
    """``{key: |dW|_F / |W0|_F}`` for every weight tensor inside a detected block."""
    base = normalize_state_dict_keys(base)
    tuned = normalize_state_dict_keys(tuned)
    out: OrderedDict[str, float] = OrderedDict()
    for b in detect_blocks(base):
        for k, w0, w1 in _pairs(base, tuned, b, param_filter):
            n0 = float(w0.norm())
            out[k] = float((w1 - w0).norm()) / n0 if n0 > 0 else math.inf
    return out


def _peft_merge(model: nn.Module) -> int:
    merged = 0
    for m in model.modules():
        if hasattr(m, "base_layer") and callable(getattr(m, "merge", None)):
            m.merge()
            merged += 1
    return merged


def lora_merged_state_dicts(
    model: nn.Module, merge_fn: Optional[Callable[[nn.Module], Optional[nn.Module]]] = None
) -> Tuple[OrderedDict[str, torch.Tensor], OrderedDict[str, torch.Tensor]]:
    """``(base, merged)`` normalised state dicts of a LoRA model (the model itself is not modified).

    ``merge_fn(copy)`` merges the LoRA deltas into the copy's base weights in place (or returns the merged module);
    by default every PEFT tuner layer (a module with ``base_layer`` and ``merge()``) is merged, which covers
    ``peft.inject_adapter_in_model``, ``PeftModel`` and diffusers' ``add_adapter``.
    """
    base = OrderedDict((k, v.detach().clone()) for k, v in normalize_state_dict_keys(model.state_dict()).items())
    work = copy.deepcopy(model)
    if merge_fn is not None:
        res = merge_fn(work)
        if isinstance(res, nn.Module):
            work = res
    elif _peft_merge(work) == 0:
        raise ValueError("no PEFT LoRA layers found to merge: pass merge_fn(model) that merges the deltas in place")
    merged = normalize_state_dict_keys(work.state_dict())
    return base, merged


def lora_importance(
    model: nn.Module,
    blocks: Optional[Sequence[str]] = None,
    merge_fn: Optional[Callable[[nn.Module], Optional[nn.Module]]] = None,
    param_filter: Callable[[str], bool] = default_param_filter,
) -> OrderedDict[str, float]:
    """Per-block ``|dW|/|W0|`` of a LoRA model: merged weights minus base weights."""
    base, merged = lora_merged_state_dicts(model, merge_fn)
    return weight_change_ratios(base, merged, blocks, param_filter)


def plot_importance(
    ratios: Mapping[str, float],
    path: Union[str, os.PathLike],
    title: str = "Relative weight change per block",
    ylabel: str = r"$\|\Delta W\|_F / \|W_0\|_F$",
) -> str:
    """Bar chart of :func:`weight_change_ratios` saved to ``path`` (format from the extension); returns the path.

    Uses matplotlib's Agg canvas directly (no pyplot, no global backend change).
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:  # pragma: no cover
        raise ImportError("plot_importance needs matplotlib: pip install matplotlib") from e
    labels = [block_label(b) for b in ratios]
    values = [float(v) for v in ratios.values()]
    fig = Figure(figsize=(max(4.0, 0.6 * len(labels) + 1.5), 3.2), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    colors = ["tab:orange" if lab.startswith("SR") else "tab:blue" for lab in labels]
    ax.bar(range(len(values)), values, color=colors)
    ax.set_xticks(range(len(values)))
    ax.set_xticklabels(labels)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = os.fspath(path)
    fig.savefig(path)
    return path

