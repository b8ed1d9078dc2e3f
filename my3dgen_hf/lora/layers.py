"""PEFT LoRA layers for the EG3D / StyleGAN2 layers of :mod:`my3dgen_hf.eg3d.layers`.

The classes follow PEFT's ``LoraLayer`` protocol (``update_layer``, ``forward`` honouring ``disable_adapters`` /
``merged`` / ``active_adapters`` / ``scaling``, ``merge`` / ``unmerge``, ``get_delta_weight``, ``set_scale`` ...), so
``G.add_adapter``, ``set_adapters``, ``disable_adapters``, ``delete_adapters``, ``fuse_lora`` and PEFT's
``get_peft_model_state_dict`` / ``set_peft_model_state_dict`` work on :class:`~my3dgen_hf.eg3d.EG3DGenerator`.
They are registered with PEFT through :func:`register_eg3d_lora_layers` (``LoraConfig._register_custom_module``).

Where the delta goes (``s`` = ``scaling[adapter]`` = ``lora_alpha / r``, or ``lora_alpha / sqrt(r)`` with rsLoRA, times
the weight given to ``set_adapters``):

* modulated convs (``SynthesisLayer`` incl. ``up=2``, ``ToRGBLayer``): ``dW = (B @ A).view(C_out, C_in, k, k)`` is
  added to the **stored** weight before modulation / demodulation (and, for ToRGB, before nothing else: ToRGB's
  equalized-lr gain sits on the styles), i.e. ``base_layer(x, w, ..., weight=W + sum_i s_i dW_i)``.
* plain ``Conv2dLayer`` ('resnet' skip): ``w = (W + s dW) * weight_gain`` (stored-space delta, gain applied after).
* ``FullyConnectedLayer`` (style affines, mapping, decoder): the delta is on the **effective** weight, as in the
  original My3DGen code (``x A^T B^T s`` without the equalized-lr ``weight_gain``): effective
  ``W_eff = W * weight_gain + s B A``, i.e. the stored-space delta is ``s B A / weight_gain``. For linear layers the
  LoRA branch is computed in output space (``base(x) + s B(A(dropout(x)))``, exactly the original's formula);
  for ``lrelu`` layers (mapping) it is passed through ``weight=`` so it lands before the activation.

The style ``affine`` of a modulated conv is a *child* of the conv. Instead of wrapping it with its own PEFT layer
(PEFT wraps parents before children, after which ``conv0.affine`` no longer resolves, and ``unload`` /
``merge_and_unload`` skip modules nested inside a tuner layer), :class:`ModulatedConvLoraLayer` owns the affine's
LoRA factors as extra adapter layers ``lora_affine_A`` / ``lora_affine_B``. Merging, unmerging, scaling, deleting,
enabling and multi-adapter mixing therefore go through one layer, and state-dict keys are
``<conv>.lora_affine_A.<adapter>.weight`` (``<conv>.lora_affine_A.weight`` in saved adapters).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from peft.tuners.lora.layer import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from torch import nn

from ..eg3d.layers import Conv2dLayer, FullyConnectedLayer, SynthesisLayer, ToRGBLayer

DECOMPOSITIONS = ("im2col", "my3dgen", "loralib")

_WARNED: set = set()


def _warn_once(key, message: str, category=UserWarning) -> None:
    if key in _WARNED:
        return
    _WARNED.add(key)
    warnings.warn(message, category, stacklevel=3)


def conv_lora_shapes(decomposition: str, r: int, c_in: int, c_out: int, k: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Shapes (A, B) of the conv LoRA factors as ``nn.Linear`` weights ``[out_features, in_features]``.

    * ``im2col`` (default, correct): A ``[r, C_in k k]``, B ``[C_out, r]``; ``rank(dW) <= r`` as a ``[C_out, C_in k k]``
      matrix (same factorization as PEFT's built-in ``Conv2d`` LoRA).
    * ``my3dgen``: the released My3DGen code (``original_conv_lora = False``): A ``[r k, C_in k k]``, B ``[C_out, r k]``,
      i.e. im2col with rank ``r k`` for ``k x k`` kernels (rank 3 for "rank 1"); scaling stays ``alpha / r``.
    * ``loralib``: microsoft/LoRA ``ConvLoRA`` as in My3DGen's ``original_conv_lora = True`` path (paper Fig. 10
      ablation): A ``[r k, C_in k]``, B ``[C_out k, r k]``; the ``[C_out k, C_in k]`` product is reinterpreted with
      ``.view(C_out, C_in, k, k)``, which scrambles the kernel layout (its rank as a ``[C_out, C_in k k]`` matrix is
      generally larger than ``r k``).

    For ``k = 1`` (ToRGB, 1x1 skip convs) all three coincide: A ``[r, C_in]``, B ``[C_out, r]``.
    """
    if decomposition not in DECOMPOSITIONS:
        raise ValueError(f"decomposition must be one of {DECOMPOSITIONS}, got {decomposition!r}")
    if k == 1 or decomposition == "im2col":
        return (r, c_in * k * k), (c_out, r)
    if decomposition == "my3dgen":
        return (r * k, c_in * k * k), (c_out, r * k)
    return (r * k, c_in * k), (c_out * k, r * k)


class EG3DLoraLayer(nn.Module, LoraLayer):
    """Common PEFT plumbing for the EG3D LoRA layers (not registered itself).

    Subclasses define ``_lora_shapes``, ``_base_delta`` (stored-space delta of ``base_layer.weight`` for one adapter,
    without scaling) and ``_forward_adapters`` (the unmerged forward with a list of adapters).
    """

    # ``decomposition`` / ``train_extras`` are per-adapter dicts, listed so that ``delete_adapter`` removes them.
    other_param_names = LoraLayer.other_param_names + ("decomposition", "train_extras")

    def __init__(self, base_layer: nn.Module, adapter_name: str, config, r: int = 0, lora_alpha: int = 1, **kwargs) -> None:
        nn.Module.__init__(self)
        LoraLayer.__init__(self, base_layer, **kwargs)
        self.decomposition: dict[str, str] = {}
        self.train_extras: dict[str, bool] = {}
        self.fan_in_fan_out = False
        self._init_adapter_containers()
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, r, lora_alpha=lora_alpha, config=config, **kwargs)

    # -- PEFT protocol -------------------------------------------------------------------------------------------------

    def _get_in_out_features(self, module: nn.Module) -> tuple[int, int]:
        if isinstance(module, FullyConnectedLayer):
            return module.in_features, module.out_features
        return module.weight.shape[1], module.weight.shape[0]

    @property
    def kernel_size(self) -> int:
        w = self.get_base_layer().weight
        return w.shape[-1] if w.ndim == 4 else 1

    def _lora_shapes(self, decomposition: str, r: int) -> tuple[tuple[int, int], tuple[int, int]]:
        raise NotImplementedError

    def _init_adapter_containers(self) -> None:
        """Hook for subclasses to create further per-adapter containers (listed in ``adapter_layer_names``)."""

    def _extra_update(self, adapter_name: str, r: int, config) -> None:
        """Hook for subclasses to create further adapter layers (the style affine's LoRA)."""

    def update_layer(self, adapter_name: str, r: int, lora_alpha: int, config, **kwargs) -> None:
        if r <= 0:
            raise ValueError(f"`r` should be a positive integer value but the value passed is {r}")
        # Raises for DoRA and the other PEFT variants: only vanilla LoRA is implemented for these layers.
        lora_variant = self.resolve_lora_variant(config=config)
        if lora_variant is not None:  # pragma: no cover - lora_variants below only maps () -> None
            raise ValueError(f"{type(self).__name__} supports vanilla LoRA only, got variant {lora_variant}")
        if config.lora_bias:
            raise ValueError(f"{type(self).__name__} does not support lora_bias=True")
        init = config.init_lora_weights
        if not (init is True or init is False or (isinstance(init, str) and init.lower() == "gaussian")):
            raise ValueError(f"{type(self).__name__} supports init_lora_weights True, False or 'gaussian', got {init!r}")
        decomposition = getattr(config, "decomposition", "im2col")
        if decomposition not in DECOMPOSITIONS:
            raise ValueError(f"decomposition must be one of {DECOMPOSITIONS}, got {decomposition!r}")

        self.r[adapter_name] = r
        self.lora_alpha[adapter_name] = lora_alpha
        self.decomposition[adapter_name] = decomposition
        self.train_extras[adapter_name] = bool(getattr(config, "train_extras", False))
        self.lora_dropout[adapter_name] = nn.Dropout(p=config.lora_dropout) if config.lora_dropout > 0.0 else nn.Identity()
        (a_out, a_in), (b_out, b_in) = self._lora_shapes(decomposition, r)
        self.lora_A[adapter_name] = nn.Linear(a_in, a_out, bias=False)
        self.lora_B[adapter_name] = nn.Linear(b_in, b_out, bias=False)
        self.lora_bias[adapter_name] = False
        self.use_rslora[adapter_name] = config.use_rslora
        self.use_dora[adapter_name] = False
        self.scaling[adapter_name] = lora_alpha / math.sqrt(r) if config.use_rslora else lora_alpha / r
        self._extra_update(adapter_name, r, config)
        self.reset_lora_parameters(adapter_name, init)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    @property
    def lora_variants(self):
        return {(): None}

    def _factor_pairs(self, adapter_name: str) -> list[tuple[nn.ModuleDict, nn.ModuleDict]]:
        return [(self.lora_A, self.lora_B)]

    def reset_lora_parameters(self, adapter_name: str, init_lora_weights) -> None:
        """As PEFT: A kaiming-uniform(a=sqrt(5)) (or N(0, 1/r) for 'gaussian'), B zeros; ``False`` keeps the random
        ``nn.Linear`` init of both factors (the adapter is then *not* a no-op, useful for tests)."""
        if init_lora_weights is False:
            return
        for lora_A, lora_B in self._factor_pairs(adapter_name):
            if adapter_name not in lora_A:
                continue
            if init_lora_weights is True:
                nn.init.kaiming_uniform_(lora_A[adapter_name].weight, a=math.sqrt(5))
            else:  # "gaussian"
                nn.init.normal_(lora_A[adapter_name].weight, std=1 / self.r[adapter_name])
            nn.init.zeros_(lora_B[adapter_name].weight)

    def set_adapter(self, adapter_names, inference_mode: bool = False) -> None:
        super().set_adapter(adapter_names, inference_mode=inference_mode)
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        with_extras = sorted(a for a in names if self.train_extras.get(a, False))
        if len(with_extras) > 1:
            _warn_once(
                ("extras", tuple(with_extras)),
                f"Adapters {with_extras} were all trained with train_extras=True. Their extras (biases, noise "
                "strengths, affine biases, b4.const) are base-model parameters shared by all adapters: the model holds "
                "the extras of the adapter loaded last, whatever the adapter weights. Use train_extras=False for "
                "adapters meant to be mixed.",
            )

    # -- weights -------------------------------------------------------------------------------------------------------

    def _base_delta(self, adapter: str) -> torch.Tensor:
        raise NotImplementedError

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """Stored-space delta of ``base_layer.weight`` for ``adapter`` (scaling included): what ``merge`` adds."""
        return self._base_delta(adapter) * self.scaling[adapter]

    def active_delta_weight(self, adapter_names: list[str] | None = None) -> torch.Tensor | None:
        """Sum of :meth:`get_delta_weight` over the (active) adapters, ``None`` when there is none."""
        names = self.active_adapters if adapter_names is None else adapter_names
        deltas = [self.get_delta_weight(a) for a in names if a in self.lora_A]
        return sum(deltas[1:], deltas[0]) if deltas else None

    def _merge_targets(self, adapter: str) -> list[tuple[nn.Parameter, torch.Tensor]]:
        """(parameter, stored-space delta) pairs that ``merge`` adds for ``adapter``."""
        return [(self.get_base_layer().weight, self.get_delta_weight(adapter))]

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        adapter_names = check_adapters_to_merge(self, adapter_names)
        for adapter in adapter_names:
            if adapter not in self.lora_A:
                continue
            with torch.no_grad():
                targets = self._merge_targets(adapter)
                if safe_merge:
                    new = [p.data + d.to(p.dtype) for p, d in targets]
                    if not all(torch.isfinite(t).all() for t in new):
                        raise ValueError(f"NaNs detected in the merged weights. The adapter {adapter} seems to be broken")
                    for (p, _), t in zip(targets, new):
                        p.data = t
                else:
                    for p, d in targets:
                        p.data += d.to(p.dtype)
            self.merged_adapters.append(adapter)

    def unmerge(self) -> None:
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.")
            return
        while self.merged_adapters:
            adapter = self.merged_adapters.pop()
            if adapter not in self.lora_A:
                continue
            with torch.no_grad():
                for p, d in self._merge_targets(adapter):
                    p.data -= d.to(p.dtype)

    # -- forward -------------------------------------------------------------------------------------------------------

    _num_batched_args = 1  # x (FC, Conv2dLayer); modulated convs also batch w

    def _forward_adapters(self, adapters: list[str], *args: Any, **kwargs: Any) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        self._check_forward_args(x, *args, **kwargs)
        adapter_names = kwargs.pop("adapter_names", None)
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        if adapter_names is not None:
            return self._mixed_batch_forward(x, *args, adapter_names=adapter_names, **kwargs)
        if self.merged:
            return self.base_layer(x, *args, **kwargs)
        active = [a for a in self.active_adapters if a in self.lora_A]
        if not active:
            return self.base_layer(x, *args, **kwargs)
        return self._forward_adapters(active, x, *args, **kwargs)

    def _mixed_batch_forward(self, x: torch.Tensor, *args: Any, adapter_names: list[str], **kwargs: Any) -> torch.Tensor:
        """Per-sample adapters (``"__base__"`` = none): each sub-batch runs with its own summed weight."""
        n_batched = self._num_batched_args - 1
        batched, rest = args[:n_batched], args[n_batched:]
        out = None
        for name in dict.fromkeys(adapter_names):
            idx = torch.tensor([i for i, a in enumerate(adapter_names) if a == name], device=x.device)
            sub = (x[idx],) + tuple(t[idx] for t in batched) + tuple(rest)
            if name != "__base__" and name in self.lora_A:
                y = self._forward_adapters([name], *sub, **kwargs)
            else:
                y = self.base_layer(*sub, **kwargs)
            if out is None:
                out = y.new_empty((x.shape[0],) + y.shape[1:])
            out[idx] = y
        return out

    def __repr__(self) -> str:
        return "lora." + super().__repr__()


class _WeightDeltaMixin:
    """Conv LoRA: ``dW = (B @ A).view(weight.shape)`` added to the stored weight passed as ``weight=``."""

    def _lora_shapes(self, decomposition, r):
        w = self.get_base_layer().weight
        c_out, c_in, k = w.shape[0], w.shape[1], w.shape[-1]
        return conv_lora_shapes(decomposition, r, c_in, c_out, k)

    def _base_delta(self, adapter: str) -> torch.Tensor:
        weight = self.get_base_layer().weight
        A, B = self.lora_A[adapter].weight, self.lora_B[adapter].weight
        cast = A.device.type == "cpu" and A.dtype in (torch.float16, torch.bfloat16)
        if cast:
            A, B = A.float(), B.float()
        return (B @ A).reshape(weight.shape).to(weight.dtype)


class ModulatedConvLoraLayer(_WeightDeltaMixin, EG3DLoraLayer):
    """LoRA for ``SynthesisLayer`` (3x3 modulated conv, optionally ``up=2``) and ``ToRGBLayer`` (1x1, no demodulation).

    The conv delta is added to the stored weight before modulation/demodulation; the style ``affine`` (a child of the
    base layer) gets its own low-rank delta from ``lora_affine_A`` [r, w_dim] / ``lora_affine_B`` [C_in, r] (when the
    config has ``style_affine=True``), on the affine's effective weight like :class:`FullyConnectedLoraLayer`.
    Both deltas share the adapter's ``r``, ``lora_alpha`` and ``scaling``.
    """

    adapter_layer_names = LoraLayer.adapter_layer_names + ("lora_affine_A", "lora_affine_B")
    _num_batched_args = 2  # x and w

    def _init_adapter_containers(self) -> None:
        self.lora_affine_A = nn.ModuleDict({})
        self.lora_affine_B = nn.ModuleDict({})

    def _affine(self) -> FullyConnectedLayer:
        """The style affine of the base layer (unwrapped if someone also wrapped it with its own LoRA layer)."""
        affine = self.get_base_layer().affine
        return affine.get_base_layer() if isinstance(affine, BaseTunerLayer) else affine

    def _extra_update(self, adapter_name: str, r: int, config) -> None:
        if getattr(config, "style_affine", True):
            affine = self._affine()
            self.lora_affine_A[adapter_name] = nn.Linear(affine.in_features, r, bias=False)
            self.lora_affine_B[adapter_name] = nn.Linear(r, affine.out_features, bias=False)

    def _factor_pairs(self, adapter_name):
        return [(self.lora_A, self.lora_B), (self.lora_affine_A, self.lora_affine_B)]

    def get_affine_delta_weight(self, adapter: str) -> torch.Tensor | None:
        """Stored-space delta of ``base_layer.affine.weight`` (``s B A / affine.weight_gain``), ``None`` without one."""
        if adapter not in self.lora_affine_A:
            return None
        affine = self._affine()
        A, B = self.lora_affine_A[adapter].weight, self.lora_affine_B[adapter].weight
        return ((B.float() @ A.float()) * (self.scaling[adapter] / affine.weight_gain)).to(affine.weight.dtype)

    def active_affine_delta_weight(self, adapter_names: list[str] | None = None) -> torch.Tensor | None:
        names = self.active_adapters if adapter_names is None else adapter_names
        deltas = [self.get_affine_delta_weight(a) for a in names if a in self.lora_affine_A]
        return sum(deltas[1:], deltas[0]) if deltas else None

    def _merge_targets(self, adapter):
        targets = super()._merge_targets(adapter)
        if adapter in self.lora_affine_A:
            targets.append((self._affine().weight, self.get_affine_delta_weight(adapter)))
        return targets

    def _forward_adapters(self, adapters, x, w, *args, **kwargs):
        base = self.get_base_layer()
        weight = kwargs.pop("weight", None)
        weight = base.weight if weight is None else weight
        delta = sum(self.get_delta_weight(a) for a in adapters)
        affine_adapters = [a for a in adapters if a in self.lora_affine_A]
        handle = None
        if affine_adapters:

            def add_affine_lora(module, inputs, output):
                # original My3DGen: styles = affine(w) + (dropout(w) @ A^T @ B^T) * scaling (no weight_gain)
                w_in = inputs[0]
                for a in affine_adapters:
                    A, B = self.lora_affine_A[a], self.lora_affine_B[a]
                    h = self._cast_input_dtype(self.lora_dropout[a](w_in), A.weight.dtype)
                    output = output + (B(A(h)) * self.scaling[a]).to(output.dtype)
                return output

            handle = base.affine.register_forward_hook(add_affine_lora)
        try:
            return self.base_layer(x, w, *args, weight=weight + delta.to(weight.dtype), **kwargs)
        finally:
            if handle is not None:
                handle.remove()


class Conv2dLoraLayer(_WeightDeltaMixin, EG3DLoraLayer):
    """LoRA for the plain equalized-lr ``Conv2dLayer`` ('resnet' skip/backbone variants): ``w = (W + s dW) * gain``."""

    def _forward_adapters(self, adapters, x, *args, **kwargs):
        weight = kwargs.pop("weight", None)
        weight = self.get_base_layer().weight if weight is None else weight
        delta = sum(self.get_delta_weight(a) for a in adapters)
        return self.base_layer(x, *args, weight=weight + delta.to(weight.dtype), **kwargs)


class FullyConnectedLoraLayer(EG3DLoraLayer):
    """LoRA for ``FullyConnectedLayer`` (mapping network, decoder, or a stand-alone affine).

    The delta is on the effective weight (``W * weight_gain + s B A``), as the original My3DGen
    ``FullyConnectedLayerWrapper``: linear layers add ``s B(A(dropout(x)))`` to the output; ``lrelu`` layers pass
    ``weight = W + s B A / weight_gain`` so the delta acts before the activation (``lora_dropout`` is not applied there).
    """

    def _lora_shapes(self, decomposition, r):
        base = self.get_base_layer()
        return (r, base.in_features), (base.out_features, r)

    def update_layer(self, adapter_name, r, lora_alpha, config, **kwargs):
        if config.lora_dropout > 0 and self.get_base_layer().activation != "linear":
            _warn_once(
                ("dropout", type(self)),
                "lora_dropout is applied to the LoRA input of linear FullyConnectedLayers only; non-linear "
                "(mapping) layers use a weight-space delta without dropout.",
            )
        super().update_layer(adapter_name, r, lora_alpha, config, **kwargs)

    def _base_delta(self, adapter):
        base = self.get_base_layer()
        A, B = self.lora_A[adapter].weight, self.lora_B[adapter].weight
        return ((B.float() @ A.float()) / base.weight_gain).to(base.weight.dtype)

    def _forward_adapters(self, adapters, x, *args, **kwargs):
        base = self.get_base_layer()
        weight = kwargs.pop("weight", None)
        if base.activation != "linear":
            weight = base.weight if weight is None else weight
            delta = sum(self.get_delta_weight(a) for a in adapters)
            return self.base_layer(x, *args, weight=weight + delta.to(weight.dtype), **kwargs)
        if weight is not None:
            kwargs["weight"] = weight
        result = self.base_layer(x, *args, **kwargs)
        for a in adapters:
            A, B = self.lora_A[a], self.lora_B[a]
            h = self._cast_input_dtype(self.lora_dropout[a](x), A.weight.dtype)
            result = result + (B(A(h)) * self.scaling[a]).to(result.dtype)
        return result


LORA_LAYER_MAPPING: dict[type[nn.Module], type[nn.Module]] = {
    SynthesisLayer: ModulatedConvLoraLayer,
    ToRGBLayer: ModulatedConvLoraLayer,
    Conv2dLayer: Conv2dLoraLayer,
    FullyConnectedLayer: FullyConnectedLoraLayer,
}


def register_eg3d_lora_layers(config):
    """Register the EG3D LoRA layers on a PEFT ``LoraConfig`` (``_register_custom_module``, experimental in PEFT 0.21).

    Idempotent; returns the config. The registration lives on the config instance and is *not* saved in
    ``adapter_config.json``: call this again on a config re-created from JSON (``config_from_metadata`` and
    :class:`~my3dgen_hf.lora.config.My3DGenLoraConfig` do it for you).
    """
    current = getattr(config, "_custom_modules", None) or {}
    if all(current.get(k) is v for k, v in LORA_LAYER_MAPPING.items()):
        return config
    config._register_custom_module(dict(LORA_LAYER_MAPPING))
    return config
