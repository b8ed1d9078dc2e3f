"""Convolutional LoRA for EG3D (My3DGen) as PEFT custom layers on :class:`~my3dgen_hf.eg3d.EG3DGenerator`.

Typical use::

    from my3dgen_hf.lora import my3dgen_lora_config, add_my3dgen_adapter, get_adapter_state_dict

    cfg = my3dgen_lora_config(rank=1)           # synthesis + SR convs/ToRGBs and their style affines
    add_my3dgen_adapter(G, cfg, "person")       # G.add_adapter(cfg, "person") + extras marked trainable
    ...train...
    sd = get_adapter_state_dict(G, "person")    # LoRA factors + extras (biases, noise strengths, b4.const)

See ``docs/lora.md``.
"""

from .config import (
    METADATA_FORMAT,
    METADATA_FORMAT_VERSION,
    My3DGenLoraConfig,
    config_from_metadata,
    config_to_metadata,
    infer_config_from_state_dict,
    my3dgen_lora_config,
    target_modules_regex,
)
from .layers import (
    DECOMPOSITIONS,
    LORA_LAYER_MAPPING,
    Conv2dLoraLayer,
    EG3DLoraLayer,
    FullyConnectedLoraLayer,
    ModulatedConvLoraLayer,
    conv_lora_shapes,
    register_eg3d_lora_layers,
)
from .utils import (
    add_my3dgen_adapter,
    count_trainable_parameters,
    extra_parameters,
    extra_trainable_parameter_names,
    get_adapter_state_dict,
    lora_layers,
    mark_extras_trainable,
    merge_and_unload,
    original_name,
    set_adapter_state_dict,
    unload,
)

__all__ = [
    "DECOMPOSITIONS",
    "LORA_LAYER_MAPPING",
    "METADATA_FORMAT",
    "METADATA_FORMAT_VERSION",
    "Conv2dLoraLayer",
    "EG3DLoraLayer",
    "FullyConnectedLoraLayer",
    "ModulatedConvLoraLayer",
    "My3DGenLoraConfig",
    "add_my3dgen_adapter",
    "config_from_metadata",
    "config_to_metadata",
    "conv_lora_shapes",
    "count_trainable_parameters",
    "extra_parameters",
    "extra_trainable_parameter_names",
    "get_adapter_state_dict",
    "infer_config_from_state_dict",
    "lora_layers",
    "mark_extras_trainable",
    "merge_and_unload",
    "my3dgen_lora_config",
    "original_name",
    "register_eg3d_lora_layers",
    "set_adapter_state_dict",
    "target_modules_regex",
    "unload",
]
