"""Diffusers-style LoRA loading for EG3D pipelines (``pipe.load_lora_weights(...)``, ``save_lora_weights``, ...).

File format (as diffusers): ``pytorch_lora_weights.safetensors`` holding PEFT LoRA tensors under
``generator.<module>.lora_A.weight`` / ``lora_B.weight``, and the adapter's configuration as JSON in the safetensors
metadata key ``lora_adapter_metadata`` (``generator.r``, ``generator.lora_alpha``, ... plus ours:
``generator.my3dgen`` with the preset kwargs and the base-model fingerprint). PEFT's own layout
(``adapter_config.json`` + ``adapter_model.safetensors``) is accepted too.

The paper's adapters also tune a few base tensors (biases, noise strengths, ``b4.const``: the "extras"). They are
stored as *deltas* from the base under ``generator_extras.<param>`` and applied by this mixin as
``base + sum_i weight_i * delta_i`` over the enabled adapters, so ``set_adapters``, ``disable_lora``,
``delete_adapters`` and ``unload_lora_weights`` treat them exactly like the LoRA deltas.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional, Union

import torch
from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY, LORA_WEIGHT_NAME_SAFE, LoraBaseMixin

from ..utils.io import atomic_path

PEFT_WEIGHT_NAME = "adapter_model.safetensors"
PEFT_CONFIG_NAME = "adapter_config.json"
GENERATOR_PREFIX = "generator"
EXTRAS_PREFIX = "generator_extras"


class AdapterError(ValueError):
    """An adapter that cannot be used with this pipeline; the message names the cause and the fix."""


# --------------------------------------------------------------------------------------------- fingerprints
def base_model_fingerprint(generator: torch.nn.Module) -> str:
    """A short hash identifying the frozen prior an adapter was trained on.

    It covers the configuration and every stored ``weight`` tensor (LoRA layers wrap but never change them; the
    tunable extras are biases, noise strengths and ``const``, which are left out on purpose)."""
    h = hashlib.sha256()
    config = {k: v for k, v in dict(getattr(generator, "config", {})).items() if not k.startswith("_")}
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    state = generator.state_dict()
    for name in sorted(state):
        if "lora_" in name or not name.endswith("weight"):
            continue
        t = state[name].detach().to("cpu", torch.float32).contiguous()
        h.update(name.replace("base_layer.", "").encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------------------------ fetching
def _resolve_file(
    path_or_repo_id: Union[str, os.PathLike],
    weight_name: Optional[str],
    subfolder: Optional[str] = None,
    revision: Optional[str] = None,
    token=None,
    cache_dir=None,
    local_files_only: Optional[bool] = None,
) -> tuple[Path, str]:
    """Local file, local folder or Hub repo -> (weights file, which format). Always asks for a named file, so a
    Hub id never triggers a listing call."""
    path = Path(path_or_repo_id)
    candidates = [weight_name] if weight_name else [LORA_WEIGHT_NAME_SAFE, PEFT_WEIGHT_NAME]
    if path.is_file():
        return path, "peft" if path.name == PEFT_WEIGHT_NAME else "diffusers"
    if path.is_dir():
        folder = path / subfolder if subfolder else path
        for name in candidates:
            if (folder / name).is_file():
                return folder / name, "peft" if name == PEFT_WEIGHT_NAME else "diffusers"
        raise AdapterError(
            f"no adapter weights in {folder}: expected {' or '.join(candidates)}; pass weight_name= if the file has another name"
        )
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(str(path_or_repo_id))
    except HFValidationError as e:
        raise AdapterError(f"{path_or_repo_id} is neither an existing local file or folder nor a Hub repo id ('user/name')") from e
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo_id = str(path_or_repo_id)
    last_missing = None
    for name in candidates:
        try:
            file = hf_hub_download(
                repo_id, name, subfolder=subfolder, revision=revision, token=token, cache_dir=cache_dir,
                local_files_only=bool(local_files_only),
            )
            if name == PEFT_WEIGHT_NAME:  # its config travels beside it
                hf_hub_download(repo_id, PEFT_CONFIG_NAME, subfolder=subfolder, revision=revision, token=token, cache_dir=cache_dir,
                                local_files_only=bool(local_files_only))
            return Path(file), "peft" if name == PEFT_WEIGHT_NAME else "diffusers"
        except RevisionNotFoundError as e:
            raise AdapterError(f"revision {revision!r} not found in Hub repo {repo_id}; check the branch, tag or commit") from e
        except GatedRepoError as e:
            raise AdapterError(f"Hub repo {repo_id} is gated: accept its terms on the Hub and pass token=") from e
        except RepositoryNotFoundError as e:
            raise AdapterError(
                f"Hub repo {repo_id} not found, or it is private and no valid token was given: check the id, or pass "
                "token= (or run `hf auth login`)"
            ) from e
        except LocalEntryNotFoundError as e:
            raise AdapterError(
                f"cannot download {name} from {repo_id}: offline (or the Hub is unreachable) and no cached copy exists; "
                "connect, or download it once and pass the local folder"
            ) from e
        except EntryNotFoundError as e:
            last_missing = e
            continue
        except HfHubHTTPError as e:
            status = getattr(getattr(e, "response", None), "status_code", None)
            if status in (401, 403):
                raise AdapterError(f"no permission to read {repo_id} (HTTP {status}): pass a token with read access") from e
            raise
    raise AdapterError(
        f"Hub repo {repo_id} has no adapter file ({' or '.join(candidates)}); pass weight_name= with the right file name"
    ) from last_missing


def read_adapter_file(file: Union[str, Path], kind: str = "diffusers") -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, metadata dict) of an adapter file; clear errors for corrupt or truncated files."""
    from safetensors import SafetensorError, safe_open

    file = Path(file)
    try:
        with safe_open(str(file), framework="pt") as f:
            raw_meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise AdapterError(f"{file} is not a readable safetensors file ({e}); it may be truncated or corrupt: download or save it again") from e
    metadata = {}
    if LORA_ADAPTER_METADATA_KEY in raw_meta:
        metadata = json.loads(raw_meta[LORA_ADAPTER_METADATA_KEY])
    elif kind == "peft" and (file.parent / PEFT_CONFIG_NAME).is_file():
        peft_cfg = json.loads((file.parent / PEFT_CONFIG_NAME).read_text())
        metadata = {f"{GENERATOR_PREFIX}.{k}": v for k, v in peft_cfg.items()}
    return tensors, metadata


def _split_state_dict(tensors: dict[str, torch.Tensor], kind: str):
    """-> (LoRA tensors keyed by module path, extras deltas keyed by parameter name)."""
    lora, extras = {}, {}
    for key, value in tensors.items():
        if key.startswith(EXTRAS_PREFIX + "."):
            extras[key[len(EXTRAS_PREFIX) + 1 :]] = value
        elif key.startswith(GENERATOR_PREFIX + "."):
            lora[key[len(GENERATOR_PREFIX) + 1 :]] = value
        elif key.startswith("base_model.model."):  # PeftModel.save_pretrained
            lora[key[len("base_model.model.") :]] = value
        elif kind == "peft" or "lora_" in key:
            lora[key] = value
        else:
            raise AdapterError(f"unexpected tensor {key!r} in the adapter file: it was not written by my3dgen-hf or PEFT")
    return lora, extras


def _unpack_metadata(metadata: dict) -> dict:
    prefix = GENERATOR_PREFIX + "."
    return {k[len(prefix) :]: v for k, v in metadata.items() if k.startswith(prefix)}


# ------------------------------------------------------------------------------------------------- the mixin
class EG3DLoraLoaderMixin(LoraBaseMixin):
    """LoRA loading for pipelines with an ``EG3DGenerator`` named ``generator``."""

    _lora_loadable_modules = [GENERATOR_PREFIX]
    generator_name = GENERATOR_PREFIX

    # ---- reading
    @classmethod
    def lora_state_dict(
        cls,
        pretrained_model_name_or_path_or_dict,
        weight_name: Optional[str] = None,
        subfolder: Optional[str] = None,
        revision: Optional[str] = None,
        token=None,
        cache_dir=None,
        local_files_only: Optional[bool] = None,
        return_lora_metadata: bool = False,
    ):
        """-> (LoRA state dict, extras deltas[, adapter metadata]) from a dict, a file, a folder or a Hub repo id."""
        if isinstance(pretrained_model_name_or_path_or_dict, dict):
            tensors, metadata, kind = pretrained_model_name_or_path_or_dict, {}, "diffusers"
        else:
            file, kind = _resolve_file(
                pretrained_model_name_or_path_or_dict, weight_name, subfolder, revision, token, cache_dir, local_files_only
            )
            tensors, metadata = read_adapter_file(file, kind)
        lora, extras = _split_state_dict(tensors, kind)
        if not lora and not extras:
            raise AdapterError("the adapter holds no LoRA tensors")
        if return_lora_metadata:
            return lora, extras, _unpack_metadata(metadata)
        return lora, extras

    def load_lora_weights(
        self,
        pretrained_model_name_or_path_or_dict,
        adapter_name: Optional[str] = None,
        hotswap: bool = False,
        **kwargs,
    ):
        """Load an identity adapter into ``pipe.generator`` under ``adapter_name`` and activate it.

        ``hotswap=True`` replaces the weights of an already loaded adapter with the same name and rank in place,
        without re-building any layer (swap one identity for another)."""
        from . import add_my3dgen_adapter, config_from_metadata, set_adapter_state_dict

        lora, extras, metadata = self.lora_state_dict(pretrained_model_name_or_path_or_dict, return_lora_metadata=True, **kwargs)
        G = self.generator
        if any(getattr(m, "merged", False) for m in G.modules()):
            raise AdapterError("a LoRA is fused into the generator; call pipe.unfuse_lora() before loading another adapter")
        expected = metadata.get("my3dgen", {}).get("base_model_fingerprint")
        if expected is not None and expected != base_model_fingerprint(G):
            raise AdapterError(
                f"this adapter was trained for another base model (fingerprint {expected}, the loaded prior is "
                f"{base_model_fingerprint(G)}); load the base model named in the adapter's model card"
            )
        existing = set(getattr(G, "peft_config", {}) or {})
        adapter_name = adapter_name or f"default_{len(existing)}"
        if hotswap:
            if adapter_name not in existing:
                raise AdapterError(f"hotswap=True needs a loaded adapter named {adapter_name!r}; loaded: {sorted(existing)}")
        else:
            if adapter_name in existing:
                raise AdapterError(f"an adapter named {adapter_name!r} is already loaded; pick another adapter_name or pass hotswap=True")
            self._snapshot_base_extras()
            add_my3dgen_adapter(G, config_from_metadata({k: v for k, v in metadata.items() if k != "my3dgen"}, lora), adapter_name)
        try:
            set_adapter_state_dict(G, lora, adapter_name, strict=True)
        except (RuntimeError, KeyError, ValueError) as e:
            if not hotswap:
                G.delete_adapters(adapter_name)
            raise AdapterError(f"the adapter's tensors do not fit this generator ({e}); it was made for another architecture") from e
        self._set_extras_delta(adapter_name, extras)
        self.set_adapters([adapter_name])
        return adapter_name

    # ---- writing
    def save_lora_weights(
        self,
        save_directory: Union[str, os.PathLike],
        generator_lora_layers: Optional[dict[str, torch.Tensor]] = None,
        adapter_name: Optional[str] = None,
        generator_extras: Optional[dict[str, torch.Tensor]] = None,
        generator_lora_adapter_metadata: Optional[dict] = None,
        weight_name: str = LORA_WEIGHT_NAME_SAFE,
        is_main_process: bool = True,
        safe_serialization: bool = True,
        **kwargs,
    ) -> Path:
        """Write ``pytorch_lora_weights.safetensors`` (atomically). With no ``generator_lora_layers``, the adapter
        ``adapter_name`` (default: the active one) and its extras are taken from ``pipe.generator``."""
        from safetensors.torch import save_file

        from . import config_to_metadata, get_adapter_state_dict

        if not safe_serialization:
            raise ValueError("only safetensors serialization is supported (safe_serialization=True)")
        G = self.generator
        if generator_lora_layers is None:
            active = self.get_active_adapters()
            adapter_name = adapter_name or (active[0] if active else None)
            if adapter_name is None:
                raise AdapterError("no adapter is loaded: add one (generator.add_adapter) or pass generator_lora_layers=")
            generator_lora_layers = get_adapter_state_dict(G, adapter_name, include_extras=False)
            if generator_extras is None:
                generator_extras = self._extras_deltas().get(adapter_name) or self.collect_trained_extras(adapter_name)
        metadata = dict(generator_lora_adapter_metadata or {})
        if adapter_name is not None and not metadata and adapter_name in getattr(G, "peft_config", {}):
            # Flat like diffusers' files (generator.r, generator.lora_alpha, ...), our fields beside them.
            nested = config_to_metadata(G.peft_config[adapter_name])
            metadata = {**nested.pop("lora_config"), **{k: nested.pop(k) for k in ("decomposition", "style_affine", "train_extras")}}
            metadata["my3dgen"] = nested
        metadata.setdefault("my3dgen", {})
        metadata["my3dgen"] = {**metadata["my3dgen"], "base_model_fingerprint": base_model_fingerprint(G)}
        tensors = {f"{GENERATOR_PREFIX}.{k}": v.detach().to("cpu").contiguous() for k, v in generator_lora_layers.items()}
        for k, v in (generator_extras or {}).items():
            tensors[f"{EXTRAS_PREFIX}.{k}"] = v.detach().to("cpu").contiguous()
        packed = {f"{GENERATOR_PREFIX}.{k}": v for k, v in metadata.items()}
        path = Path(save_directory) / weight_name
        if is_main_process:
            with atomic_path(path) as tmp:
                save_file(tensors, str(tmp), metadata={"format": "pt", LORA_ADAPTER_METADATA_KEY: json.dumps(packed, sort_keys=True, default=str)})
        return path

    # ---- extras: base + sum_i w_i * delta_i over the enabled adapters
    def _extras_state(self) -> dict:
        G = self.generator
        if not hasattr(G, "_my3dgen_extras"):
            G._my3dgen_extras = {"base": {}, "deltas": {}, "weights": {}, "enabled": True}
        return G._my3dgen_extras

    def _extras_deltas(self) -> dict[str, dict[str, torch.Tensor]]:
        return self._extras_state()["deltas"]

    def _plain_parameters(self) -> dict[str, torch.nn.Parameter]:
        from . import original_name

        G = self.generator
        return {original_name(G, n): p for n, p in G.named_parameters() if "lora_" not in n}

    def _snapshot_base_extras(self):
        """Remember the prior's values of every tensor an adapter may tune (before any adapter changes them)."""
        from . import extra_parameters

        state = self._extras_state()
        if state["base"] or state["deltas"]:
            return
        G = self.generator
        params = self._plain_parameters()
        names = [n for n in params if n.endswith((".bias", ".noise_strength", ".const")) and not n.startswith(("decoder.", "backbone.mapping."))]
        names = set(names) | set(extra_parameters(G))
        state["base"] = {n: params[n].detach().clone() for n in names}

    def add_identity_adapter(self, adapter_name: str, config=None, **config_kwargs):
        """Add a fresh adapter to ``pipe.generator`` for training (``my3dgen_lora_config(**config_kwargs)`` by default);
        with ``train_extras`` its biases, noise strengths and ``b4.const`` become trainable too."""
        from . import add_my3dgen_adapter, my3dgen_lora_config

        self._snapshot_base_extras()
        add_my3dgen_adapter(self.generator, config or my3dgen_lora_config(**config_kwargs), adapter_name)
        self._extras_state()["weights"] = {adapter_name: 1.0}
        return adapter_name

    def collect_trained_extras(self, adapter_name: str) -> dict[str, torch.Tensor]:
        """After training ``adapter_name`` in place: its extras as deltas from the prior, kept so that
        ``set_adapters``/``disable_lora``/``save_lora_weights`` treat them like the LoRA deltas."""
        from . import extra_parameters

        state = self._extras_state()
        deltas = {}
        for name, p in extra_parameters(self.generator, adapter_name).items():
            if name not in state["base"]:
                raise AdapterError(f"no prior value recorded for {name}; create adapters with pipe.add_identity_adapter()")
            deltas[name] = (p.detach() - state["base"][name]).clone()
        if deltas:
            state["deltas"][adapter_name] = deltas
        return deltas

    def _set_extras_delta(self, adapter_name: str, extras: dict[str, torch.Tensor]):
        deltas = self._extras_deltas()
        params = self._plain_parameters()
        unknown = [k for k in extras if k not in params]
        if unknown:
            raise AdapterError(f"the adapter tunes tensors this generator does not have: {unknown[:3]}; it was made for another architecture")
        bad = [k for k, v in extras.items() if v.shape != params[k].shape]
        if bad:
            raise AdapterError(f"the adapter's tensors do not fit this generator ({bad[:3]}); it was made for another architecture")
        if extras:
            deltas[adapter_name] = {k: v.to(params[k]) for k, v in extras.items()}
        else:
            deltas.pop(adapter_name, None)

    def _apply_extras(self):
        state = self._extras_state()
        if not state["base"]:
            return
        params = self._plain_parameters()
        with torch.no_grad():
            for name, base in state["base"].items():
                value = base.clone()
                if state["enabled"]:
                    for adapter, w in state["weights"].items():
                        delta = state["deltas"].get(adapter, {}).get(name)
                        if delta is not None:
                            value += w * delta
                params[name].copy_(value)

    def set_adapters(self, adapter_names, adapter_weights=None):
        import warnings

        with warnings.catch_warnings():
            # The layers warn that shared extras are last-one-wins; here they are mixed linearly (see below).
            warnings.filterwarnings("ignore", message=".*were all trained with train_extras=True.*")
            super().set_adapters(adapter_names, adapter_weights)
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        weights = adapter_weights if isinstance(adapter_weights, list) else [1.0 if adapter_weights is None else adapter_weights] * len(names)
        state = self._extras_state()
        state["weights"] = {n: float(w) for n, w in zip(names, weights)}
        state["enabled"] = True
        self._apply_extras()

    def disable_lora(self):
        super().disable_lora()
        self._extras_state()["enabled"] = False
        self._apply_extras()

    def enable_lora(self):
        super().enable_lora()
        self._extras_state()["enabled"] = True
        self._apply_extras()

    def delete_adapters(self, adapter_names):
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        super().delete_adapters(names)
        state = self._extras_state()
        for n in names:
            state["deltas"].pop(n, None)
            state["weights"].pop(n, None)
        self._apply_extras()

    def unload_lora_weights(self):
        state = self._extras_state()
        state["deltas"].clear()
        state["weights"] = {}
        self._apply_extras()
        super().unload_lora_weights()

    def fuse_lora(self, lora_scale: float = 1.0, safe_fusing: bool = False, adapter_names=None, components=None, **kwargs):
        """Merge the active adapters into the generator's weights (rendering then costs nothing extra).
        The extras are already part of the weights."""
        super().fuse_lora(components=components or [GENERATOR_PREFIX], lora_scale=lora_scale, safe_fusing=safe_fusing, adapter_names=adapter_names, **kwargs)

    def unfuse_lora(self, components=None, **kwargs):
        super().unfuse_lora(components=components or [GENERATOR_PREFIX], **kwargs)
