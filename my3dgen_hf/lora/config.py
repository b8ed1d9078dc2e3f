"""LoRA configuration presets for My3DGen-style personalization of :class:`~my3dgen_hf.eg3d.EG3DGenerator`."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

from peft import LoraConfig

from .layers import DECOMPOSITIONS, register_eg3d_lora_layers

METADATA_FORMAT = "my3dgen-lora"
METADATA_FORMAT_VERSION = 1

_SYNTHESIS = r"backbone\.synthesis\.b\d+\.(?:conv0|conv1|torgb|skip)"
_SUPERRESOLUTION = r"superresolution\.block\d+\.(?:conv0|conv1|torgb|skip)"
_MAPPING = r"backbone\.mapping\.(?:embed|fc\d+)"
_DECODER = r"decoder\.net\.(?:0|2)"


def target_modules_regex(synthesis: bool = True, superresolution: bool = True, mapping: bool = False, decoder: bool = False) -> str:
    """PEFT ``target_modules`` regex (``re.fullmatch`` on module names; any prefix allowed).

    Only the modulated convs / ToRGBs (and 'resnet' ``skip`` convs) are targeted, never their ``affine`` children:
    the affine LoRA is owned by the conv's LoRA layer (``style_affine``).
    """
    parts = [p for p, on in ((_SYNTHESIS, synthesis), (_SUPERRESOLUTION, superresolution), (_MAPPING, mapping), (_DECODER, decoder)) if on]
    if not parts:
        raise ValueError("at least one of synthesis, superresolution, mapping, decoder must be targeted")
    return r"(?:.*\.)?(?:" + "|".join(parts) + ")"


@dataclass
class My3DGenLoraConfig(LoraConfig):
    """A PEFT ``LoraConfig`` (``peft_type`` LORA, handled by PEFT's ``LoraModel``) with the My3DGen options.

    The EG3D LoRA layers are registered on every instance (``__post_init__``), also when re-created from a dict.
    The extra fields end up in ``to_dict()`` / ``adapter_config.json``; a plain ``LoraConfig.from_pretrained`` drops
    them with a warning, so re-create configs with :func:`config_from_metadata`.
    """

    decomposition: str = field(
        default="im2col",
        metadata={"help": "conv LoRA factorization: 'im2col' (rank r), 'my3dgen' (released code, rank r*k) or 'loralib'"},
    )
    style_affine: bool = field(default=True, metadata={"help": "LoRA on the style affine of every targeted modulated conv"})
    train_extras: bool = field(
        default=True,
        metadata={"help": "also train biases, noise strengths, affine biases and b4.const of the targeted layers"},
    )

    def __post_init__(self):
        super().__post_init__()
        if self.decomposition not in DECOMPOSITIONS:
            raise ValueError(f"decomposition must be one of {DECOMPOSITIONS}, got {self.decomposition!r}")
        if self.bias != "none":
            raise ValueError("use train_extras instead of PEFT's `bias` option (it covers only part of the extras)")
        register_eg3d_lora_layers(self)


def my3dgen_lora_config(
    rank: int = 1,
    alpha: float | None = None,
    dropout: float = 0.0,
    style_affine: bool = True,
    superresolution: bool = True,
    mapping: bool = False,
    decoder: bool = False,
    train_extras: bool = True,
    decomposition: str = "im2col",
    init_lora_weights=True,
    use_rslora: bool = False,
    synthesis: bool = True,
) -> My3DGenLoraConfig:
    """The My3DGen LoRA preset: every synthesis conv / ToRGB (and their style affines) of ``backbone.synthesis`` and of
    both super-resolution blocks; mapping network and OSGDecoder frozen unless ``mapping`` / ``decoder``.

    ``alpha`` defaults to ``rank`` (scaling 1; the paper's README trains with ``--lora=1 --lora_alpha=1``).
    ``decomposition="my3dgen"`` reproduces the released code's parameterization (rank ``3 r`` for 3x3 convs,
    243,965 trainable parameters at rank 1 with extras on ffhq512-128); ``"loralib"`` its ``original_conv_lora`` path.
    ``train_extras`` marks extra base parameters trainable (see :func:`~my3dgen_hf.lora.mark_extras_trainable`).
    """
    if rank <= 0:
        raise ValueError(f"rank must be positive, got {rank}")
    preset = dict(
        rank=rank, alpha=alpha, dropout=dropout, style_affine=style_affine, superresolution=superresolution,
        mapping=mapping, decoder=decoder, train_extras=train_extras, decomposition=decomposition,
        init_lora_weights=init_lora_weights, use_rslora=use_rslora, synthesis=synthesis,
    )
    cfg = My3DGenLoraConfig(
        r=rank,
        lora_alpha=rank if alpha is None else alpha,
        lora_dropout=dropout,
        target_modules=target_modules_regex(synthesis, superresolution, mapping, decoder),
        init_lora_weights=init_lora_weights,
        use_rslora=use_rslora,
        bias="none",
        decomposition=decomposition,
        style_affine=style_affine,
        train_extras=train_extras,
    )
    cfg._my3dgen_preset = preset
    return cfg


_OUR_FIELDS = ("decomposition", "style_affine", "train_extras")


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        return sorted(_jsonable(v) for v in value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if hasattr(value, "value") and isinstance(value, str):  # str enums (PeftType, TaskType)
        return value.value
    return value


def config_to_metadata(cfg: LoraConfig) -> dict:
    """JSON-able description of an adapter config that :func:`config_from_metadata` turns back into a config.

    ``{"format": "my3dgen-lora", "format_version": 1, "lora_config": <LoraConfig.to_dict() without our fields>,
    "decomposition", "style_affine", "train_extras", "preset": <my3dgen_lora_config kwargs or None>}``.
    A plain ``LoraConfig`` (with the layers registered) is described with the defaults the layers use for it
    (``im2col``, ``style_affine=True``, ``train_extras=False``).
    """
    peft_dict = _jsonable(cfg.to_dict())
    for name in _OUR_FIELDS:
        peft_dict.pop(name, None)
    meta = {
        "format": METADATA_FORMAT,
        "format_version": METADATA_FORMAT_VERSION,
        "lora_config": peft_dict,
        "decomposition": getattr(cfg, "decomposition", "im2col"),
        "style_affine": bool(getattr(cfg, "style_affine", True)),
        "train_extras": bool(getattr(cfg, "train_extras", False)),
        "preset": copy.deepcopy(getattr(cfg, "_my3dgen_preset", None)),
    }
    json.dumps(meta)  # fail early if something is not JSON-able
    return meta


def _lora_config_kwargs(d: dict) -> dict:
    kwargs = dict(d)
    kwargs.pop("peft_type", None)  # set by LoraConfig.__post_init__
    known = {f.name for f in dataclasses.fields(My3DGenLoraConfig) if f.init}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        warnings.warn(f"ignoring LoraConfig keys unknown to this PEFT version: {unknown}")
        for name in unknown:
            kwargs.pop(name)
    return kwargs


def _lora_tensors(state_dict: dict) -> dict[str, dict[str, Any]]:
    """module name -> {"lora_A": tensor, ...} for the LoRA keys of a PEFT state dict (adapter name removed)."""
    modules: dict[str, dict[str, Any]] = {}
    for key, value in state_dict.items():
        key = key.removeprefix("base_model.model.")
        m = re.fullmatch(r"(.+)\.(lora_(?:affine_)?[AB])\.weight", key)
        if m:
            modules.setdefault(m.group(1), {})[m.group(2)] = value
    return modules


def _infer_decomposition(modules: dict[str, dict[str, Any]], r: int) -> str:
    found = set()
    for name, t in modules.items():
        if "lora_A" not in t or "lora_B" not in t or not re.search(r"(?:^|\.)conv[01]$", name):
            continue
        (a0, a1), (b0, b1) = t["lora_A"].shape, t["lora_B"].shape
        if a0 == r:
            found.add("im2col")
        elif a0 == 3 * r and b1 == 3 * r:  # 3x3 kernels: my3dgen A [3r, 9 I], loralib A [3r, 3 I] (EG3D widths are 2^n)
            found.add("my3dgen" if a1 % 9 == 0 and b0 * 3 != a1 else "loralib")
        else:
            raise ValueError(f"cannot infer the conv LoRA decomposition of {name}: A {tuple(t['lora_A'].shape)}, B {tuple(t['lora_B'].shape)}")
    if len(found) > 1:
        raise ValueError(f"inconsistent conv LoRA decompositions in the state dict: {sorted(found)}")
    return found.pop() if found else "im2col"


def infer_config_from_state_dict(state_dict: dict, lora_alpha: float | None = None) -> My3DGenLoraConfig:
    """A config that re-creates the adapter layout of a LoRA state dict without metadata: the exact modules of its
    keys, the rank (from a ToRGB / affine / FC factor), ``style_affine`` from ``lora_affine_*`` keys and the conv
    decomposition from the factor shapes. ``lora_alpha`` cannot be recovered: it defaults to the rank (scaling 1, warns)."""
    modules = _lora_tensors(state_dict)
    if not modules:
        raise ValueError("the state dict holds no LoRA factors (keys like '<module>.lora_A.weight')")
    ranks = [t["lora_affine_A"].shape[0] for t in modules.values() if "lora_affine_A" in t]
    ranks += [t["lora_A"].shape[0] for n, t in modules.items() if "lora_A" in t and not re.search(r"(?:^|\.)conv[01]$", n)]
    if not ranks:
        ranks = [t["lora_A"].shape[0] for t in modules.values() if "lora_A" in t]
    if len(set(ranks)) != 1:
        raise ValueError(f"cannot infer one rank from the state dict (found {sorted(set(ranks))}); pass the adapter metadata")
    r = int(ranks[0])
    if lora_alpha is None:
        warnings.warn(f"no adapter metadata: assuming lora_alpha = r = {r} (scaling 1)")
        lora_alpha = r
    names = sorted(n for n, t in modules.items() if "lora_A" in t)
    return My3DGenLoraConfig(
        r=r,
        lora_alpha=lora_alpha,
        target_modules=r"(?:.*\.)?(?:" + "|".join(re.escape(n) for n in names) + ")",
        decomposition=_infer_decomposition(modules, r),
        style_affine=any("lora_affine_A" in t for t in modules.values()),
        train_extras=False,
    )


def config_from_metadata(meta: dict | str | None, state_dict: dict | None = None) -> My3DGenLoraConfig:
    """Inverse of :func:`config_to_metadata` (the dict or its JSON string); the layers are registered.

    Also accepts a plain PEFT ``LoraConfig`` dict (``adapter_config.json``; our fields are taken from it when present,
    otherwise ``style_affine`` / ``decomposition`` are inferred from ``state_dict`` when given) and, with empty
    metadata, infers everything from ``state_dict`` (:func:`infer_config_from_state_dict`). Keys other than ours
    (e.g. a loader's own ``"my3dgen"`` entry) are ignored.
    """
    if isinstance(meta, str):
        meta = json.loads(meta)
    meta = dict(meta or {})
    if meta.get("format") == METADATA_FORMAT:
        version = meta.get("format_version")
        if not isinstance(version, int) or version > METADATA_FORMAT_VERSION:
            raise ValueError(f"unsupported {METADATA_FORMAT} format_version {version!r} (this code reads <= {METADATA_FORMAT_VERSION})")
        kwargs = _lora_config_kwargs(meta["lora_config"])
        for name in _OUR_FIELDS:
            kwargs[name] = meta[name]
        cfg = My3DGenLoraConfig(**kwargs)
        if meta.get("preset") is not None:
            cfg._my3dgen_preset = copy.deepcopy(meta["preset"])
        return cfg
    if "r" in meta or "target_modules" in meta:  # a PEFT LoraConfig dict
        kwargs = _lora_config_kwargs(meta)
        if state_dict is not None:
            modules = _lora_tensors(state_dict)
            kwargs.setdefault("style_affine", any("lora_affine_A" in t for t in modules.values()))
            kwargs.setdefault("decomposition", _infer_decomposition(modules, kwargs.get("r", 8)))
        kwargs.setdefault("train_extras", False)
        return My3DGenLoraConfig(**kwargs)
    if meta.get("format") is not None:
        raise ValueError(f"not a {METADATA_FORMAT} metadata dict (format={meta.get('format')!r})")
    if state_dict is None:
        raise ValueError("no adapter metadata: pass the adapter state dict to infer the configuration from it")
    return infer_config_from_state_dict(state_dict)
