"""Read original NVIDIA EG3D network-snapshot pickles (``network-snapshot-*.pkl``, ``ffhq512-128.pkl``) safely.

The original format stores every persistent class together with the *full source code* of its module and
re-``exec``s that source on load (``torch_utils.persistence``). This reader never does that: a restricted
unpickler maps the handful of globals a genuine snapshot references onto inert stubs, and refuses everything
else, so no code from the file is ever imported or executed. The result is the generator's plain state dict
and constructor config.

Usage::

    net = load_network_pickle("ffhq512-128.pkl")            # key="G_ema"
    net.state_dict["backbone.mapping.fc0.weight"], net.config["rendering_kwargs"]
"""

from __future__ import annotations

import argparse
import io
import os
import pickle
import re
import sys
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

__all__ = [
    "ConvertedNetwork",
    "NetworkPickleError",
    "NetworkKeyError",
    "UnsafePickleError",
    "load_network_pickle",
    "convert_network_pickle",
    "main",
]


# ----------------------------------------------------------------------------------------------------------
# Errors


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle references a global that this loader refuses to resolve (nothing was executed)."""

    def __init__(self, message: str, global_name: str = "") -> None:
        super().__init__(message)
        self.global_name = global_name


class NetworkPickleError(ValueError):
    """The file is not a readable EG3D network snapshot (truncated, not a pickle, unexpected layout)."""


class NetworkKeyError(NetworkPickleError, KeyError):
    """The requested network (e.g. ``G_ema``) is not in the snapshot."""

    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return str(self.args[0]) if self.args else ""


# ----------------------------------------------------------------------------------------------------------
# Inert stand-ins for the objects a snapshot contains


class PickledObject:
    """An object restored without its class: only the class name and the pickled state are kept."""

    class_name: str = ""

    def __init__(self, class_name: str = "", state: Any = None) -> None:
        self.class_name = class_name
        self.state = state

    def __setstate__(self, state: Any) -> None:
        # BUILD opcode: store the state verbatim instead of running any class-specific logic.
        self.state = state

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.class_name}>"


class PersistentObject(PickledObject):
    """What ``torch_utils.persistence._reconstruct_persistent_obj`` would build; ``module_src`` is dropped."""

    def __init__(self, class_name: str, state: Any, version: Any = None) -> None:
        super().__init__(class_name, state)
        self.version = version


class EasyDictStub(dict):
    """Stand-in for ``dnnlib.util.EasyDict`` (a dict with attribute access; attributes are not needed here)."""


class _GlobalClassStub(PickledObject):
    """Base of the per-global stub classes for class references (``training.*``, ``torch.nn.modules.*``)."""

    def __new__(cls, *args: Any, **kwargs: Any) -> "_GlobalClassStub":
        # NEWOBJ calls cls.__new__(cls, *args); the args are kept as data, never interpreted.
        obj = object.__new__(cls)
        obj.class_name = cls.class_name
        obj.state = None
        obj.newobj_args = args
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # REDUCE-style construction: keep args as data
        pass


class _DTypeSpec:
    """A pickled ``numpy.dtype``; resolved to a real dtype only for plain numeric kinds."""

    _NAME = re.compile(r"^[<>|=]?[biufc]\d{1,2}$")

    def __init__(self, name: Any, align: Any = False, copy: Any = True) -> None:
        if not isinstance(name, str) or not self._NAME.match(name):
            raise NetworkPickleError(f"unsupported numpy dtype {name!r} in pickle (only numeric scalars are read)")
        self.name = name
        self.byteorder = "="

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "|", "="):
            self.byteorder = state[1]

    def resolve(self) -> np.dtype:
        name = self.name.lstrip("<>|=")
        prefix = self.byteorder if self.byteorder in "<>" else ""
        dtype = np.dtype(prefix + name)
        if dtype.kind not in "biufc":
            raise NetworkPickleError(f"unsupported numpy dtype {dtype} in pickle")
        return dtype


# ----------------------------------------------------------------------------------------------------------
# Safe replacements for the callables a snapshot references


def _reconstruct_persistent_obj(meta: Any) -> PersistentObject:
    """Record class name and state of a persistent object; ignore (never exec) ``meta['module_src']``."""
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("class_name"), str):
        raise NetworkPickleError("malformed persistent-object record in pickle (expected type='class' meta dict)")
    return PersistentObject(meta["class_name"], meta.get("state"), meta.get("version"))


def _load_from_bytes(data: Any) -> Any:
    """Decode a storage from its legacy ``torch.save`` blob with torch's own weights-only (safe) unpickler."""
    if not isinstance(data, (bytes, bytearray)):
        raise NetworkPickleError("malformed tensor storage in pickle (expected bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TypedStorage deprecation noise
            storage = torch.load(io.BytesIO(bytes(data)), map_location="cpu", weights_only=True)
    except Exception as e:  # torch's weights-only unpickler refused or could not parse the blob
        raise NetworkPickleError(f"a tensor storage could not be decoded safely ({type(e).__name__}: {e})") from None
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise NetworkPickleError(f"malformed tensor storage in pickle (decoded to {type(storage).__name__})")
    return storage


def _is_int_seq(x: Any) -> bool:
    return isinstance(x, (tuple, list)) and all(isinstance(v, int) and not isinstance(v, bool) for v in x)


def _rebuild_tensor_v2(
    storage: Any,
    storage_offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> torch.Tensor:
    """Tensor view of a decoded storage; hooks and metadata are ignored (they are never called anyway)."""
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise NetworkPickleError("malformed tensor in pickle (storage is not a tensor storage)")
    if not isinstance(storage_offset, int) or not _is_int_seq(size) or not _is_int_seq(stride):
        raise NetworkPickleError("malformed tensor in pickle (bad offset/size/stride)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if isinstance(storage, torch.TypedStorage):
            dtype, untyped = storage.dtype, storage.untyped()
        else:
            dtype, untyped = torch.uint8, storage
    # set_ checks that the view fits inside the storage, so a hostile size/stride cannot read out of bounds.
    return torch.empty(0, dtype=dtype).set_(untyped, storage_offset, tuple(size), tuple(stride))


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None) -> torch.Tensor:
    """A Parameter becomes its plain data tensor (only the values matter for a state dict)."""
    if not isinstance(data, torch.Tensor):
        raise NetworkPickleError("malformed parameter in pickle (data is not a tensor)")
    return data


def _rebuild_parameter_with_state(
    data: Any, requires_grad: Any = False, backward_hooks: Any = None, state: Any = None
) -> torch.Tensor:
    return _rebuild_parameter(data, requires_grad, backward_hooks)


def _numpy_scalar(dtype: Any, data: Any = None) -> np.generic:
    """``numpy.core.multiarray.scalar`` restricted to numeric dtypes decoded from raw bytes."""
    if not isinstance(dtype, _DTypeSpec) or not isinstance(data, (bytes, bytearray)):
        raise NetworkPickleError("unsupported numpy scalar in pickle (only numeric scalars are read)")
    resolved = dtype.resolve()
    if len(data) != resolved.itemsize:
        raise NetworkPickleError("malformed numpy scalar in pickle (wrong byte count)")
    return np.frombuffer(bytes(data), dtype=resolved)[0]


def _codecs_encode(obj: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
    """Protocol-2 pickles spell ``bytes`` as ``_codecs.encode(str, 'latin1')``; only that form is allowed."""
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise NetworkPickleError("unsupported _codecs.encode call in pickle")
    return obj.encode("latin1")


def _make_set(items: Any = ()) -> set:
    return set(items)


def _make_frozenset(items: Any = ()) -> frozenset:
    return frozenset(items)


class _ObjectMarker:
    """Stands for ``builtins.object`` as the ``base`` argument of ``copyreg._reconstructor``."""


def _copyreg_reconstructor(cls: Any, base: Any, state: Any) -> PickledObject:
    """Protocol 0/1 object construction; only for stub classes with base ``object``."""
    if not (isinstance(cls, type) and issubclass(cls, _GlobalClassStub)) or base is not _ObjectMarker:
        raise NetworkPickleError("unsupported copyreg._reconstructor call in pickle")
    return cls()


def _copyreg_newobj(cls: Any, *args: Any) -> PickledObject:
    if not (isinstance(cls, type) and issubclass(cls, _GlobalClassStub)):
        raise NetworkPickleError("unsupported copyreg.__newobj__ call in pickle")
    return cls.__new__(cls, *args)


def _copyreg_newobj_ex(cls: Any, args: Any = (), kwargs: Any = None) -> PickledObject:
    return _copyreg_newobj(cls, *tuple(args or ()))


# Exact (module, name) -> safe replacement. Everything not here (or matched by a stub prefix) is refused.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): _make_set,
    ("builtins", "frozenset"): _make_frozenset,
    ("builtins", "object"): _ObjectMarker,
    ("copyreg", "_reconstructor"): _copyreg_reconstructor,
    ("copyreg", "__newobj__"): _copyreg_newobj,
    ("copyreg", "__newobj_ex__"): _copyreg_newobj_ex,
    ("_codecs", "encode"): _codecs_encode,
    ("dnnlib.util", "EasyDict"): EasyDictStub,
    ("dnnlib", "EasyDict"): EasyDictStub,
    ("numpy", "dtype"): _DTypeSpec,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
    ("torch.storage", "_load_from_bytes"): _load_from_bytes,
    ("torch", "_load_from_bytes"): _load_from_bytes,
}

# Python-2 module spellings that protocol <= 2 pickles written by Python 3 still use (fix_imports).
_MODULE_ALIASES = {"__builtin__": "builtins", "copy_reg": "copyreg"}

# Class references to these modules become inert stubs (never imported): EG3D's non-persistent submodules
# (OSGDecoder, ImportanceRenderer, ...) and torch.nn containers/activations inside the generator.
_STUB_MODULE_PREFIXES = ("training.", "torch.nn.modules.")


def _is_stub_module(module: str) -> bool:
    return module == "training" or module.startswith(_STUB_MODULE_PREFIXES)


class SafeUnpickler(pickle.Unpickler):
    """Unpickler resolving only an explicit allow-list of globals to safe replacements; nothing is imported."""

    def __init__(self, file: Any, source: str = "<pickle>") -> None:
        super().__init__(file)
        self._source = source
        self._stub_classes: dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:
        canonical = (_MODULE_ALIASES.get(module, module), name)
        if canonical in _ALLOWED:
            return _ALLOWED[canonical]
        if _is_stub_module(canonical[0]):
            qualname = f"{canonical[0]}.{name}"
            if qualname not in self._stub_classes:
                # One stub class per global, so that identity checks inside the pickle stream still hold.
                self._stub_classes[qualname] = type(name, (_GlobalClassStub,), {"class_name": qualname})
            return self._stub_classes[qualname]
        refused = f"{module}.{name}"
        raise UnsafePickleError(
            f"{self._source} tries to import `{refused}`; refused. This loader never executes code from pickles, "
            f"and a genuine EG3D network snapshot does not need `{refused}`. The file is corrupt or malicious; "
            "do not load it with plain pickle/torch.load either.",
            global_name=refused,
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(
            f"{self._source} uses persistent ids, which EG3D network snapshots never do; refused.",
            global_name="persistent_load",
        )


# ----------------------------------------------------------------------------------------------------------
# Public API


@dataclass
class ConvertedNetwork:
    """A network read from a snapshot: state dict, constructor config and original class name."""

    state_dict: dict[str, torch.Tensor]
    config: dict[str, Any]
    class_name: str
    extra_buffers: dict[str, torch.Tensor] = field(default_factory=dict)


# Persistent records store only the bare class name; the module is recoverable only for known EG3D classes.
_KNOWN_MODULES = {
    "TriPlaneGenerator": "training.triplane",
    "DualDiscriminator": "training.dual_discriminator",
    "SingleDiscriminator": "training.dual_discriminator",
    "DummyDualDiscriminator": "training.dual_discriminator",
    "AugmentPipe": "training.augment",
}

# Root-level buffers that the training loop registers after construction (train.py / training_loop.py);
# the generator constructor does not create them, so a strict load_state_dict would reject them.
_EXTRA_ROOT_BUFFERS = frozenset({"dataset_label_std"})

# Positional constructor arguments of TriPlaneGenerator, in order.
_POSITIONAL_NAMES = ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels")


def _read_snapshot(path: Path) -> Any:
    with open(path, "rb") as f:
        head = f.read(4)
        f.seek(0)
        try:
            return SafeUnpickler(f, source=str(path)).load()
        except UnsafePickleError:
            raise
        except NetworkPickleError as e:
            raise NetworkPickleError(f"{path}: {e}") from None
        except (EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError, KeyError,
                RuntimeError, UnicodeDecodeError, MemoryError) as e:
            if head.startswith(b"PK"):
                hint = ("it is a zip archive (a torch.save checkpoint?), not an NVIDIA network snapshot pickle; "
                        "pass the original network-snapshot-*.pkl")
            elif not head.startswith(b"\x80"):
                hint = "it does not start like a pickle; pass the original network-snapshot-*.pkl"
            else:
                hint = "the file is truncated or corrupt (incomplete download?); download it again"
            raise NetworkPickleError(f"cannot read {path}: {hint} ({type(e).__name__}: {e})") from None


def _module_state(obj: Any, where: str) -> dict:
    if not isinstance(obj, PickledObject) or not isinstance(obj.state, dict):
        raise NetworkPickleError(f"{where} is not an nn.Module record (got {type(obj).__name__})")
    return obj.state


def _collect_state_dict(obj: Any, prefix: str, out: dict[str, torch.Tensor]) -> None:
    """Reproduce ``nn.Module.state_dict()`` from pickled module dicts (recursion order matches torch)."""
    state = _module_state(obj, prefix.rstrip(".") or "network")
    non_persistent = state.get("_non_persistent_buffers_set") or set()
    entries = [(n, t) for n, t in (state.get("_parameters") or {}).items()]
    entries += [(n, t) for n, t in (state.get("_buffers") or {}).items() if n not in non_persistent]
    for name, tensor in entries:
        if tensor is None:
            continue
        if not isinstance(tensor, torch.Tensor):
            raise NetworkPickleError(f"{prefix}{name} is not a tensor (got {type(tensor).__name__})")
        # Clone: tensors from one storage may alias each other; fp32 because EG3D stores no integer state.
        t = tensor.detach()
        t = t.to(torch.float32) if t.is_floating_point() else t
        out[prefix + name] = t.contiguous().clone()
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            _collect_state_dict(child, f"{prefix}{name}.", out)


def _plain(value: Any, where: str) -> Any:
    """Convert pickled config values to JSON-able Python (EasyDict -> dict, numpy -> builtins, tuple -> list)."""
    if isinstance(value, np.generic):  # first: np.float64 is also a float subclass
        return _plain(value.item(), where)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise NetworkPickleError(f"config value {where} is not plain data (got {type(value).__name__})")


def _extract_config(state: dict) -> dict[str, Any]:
    args = state.get("_init_args") or ()
    kwargs = state.get("_init_kwargs") or {}
    if not isinstance(args, (tuple, list)) or not isinstance(kwargs, dict):
        raise NetworkPickleError("malformed _init_args/_init_kwargs in the network record")
    if len(args) > len(_POSITIONAL_NAMES):
        raise NetworkPickleError(f"{len(args)} positional constructor args; expected at most {len(_POSITIONAL_NAMES)}")
    config: dict[str, Any] = {}
    for name, value in zip(_POSITIONAL_NAMES, args):
        config[name] = _plain(value, name)
    for name, value in kwargs.items():
        if name in config:
            raise NetworkPickleError(f"constructor argument {name!r} given both positionally and by keyword")
        config[str(name)] = _plain(value, str(name))
    if "rendering_kwargs" not in config and "rendering_kwargs" in state:
        config["rendering_kwargs"] = _plain(state["rendering_kwargs"], "rendering_kwargs")
    if "neural_rendering_resolution" in state:
        config["neural_rendering_resolution"] = _plain(state["neural_rendering_resolution"], "neural_rendering_resolution")
    return config


def load_network_pickle(path: str | os.PathLike, key: str = "G_ema") -> ConvertedNetwork:
    """Safely read network ``key`` of an original EG3D snapshot pickle; no code from the file is executed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"network pickle not found: {path} (expected e.g. ffhq512-128.pkl or network-snapshot-*.pkl)")
    data = _read_snapshot(path)
    if not isinstance(data, dict):
        raise NetworkPickleError(f"{path} is not a network snapshot: expected a dict with G/D/G_ema, got {type(data).__name__}")
    if key not in data:
        available = ", ".join(repr(k) for k in data)
        raise NetworkKeyError(f"{path} has no network {key!r}; available keys: {available}. Pass one with key=... / --key")
    net = data[key]
    state = _module_state(net, key)
    class_name = net.class_name
    if isinstance(net, PersistentObject) and class_name in _KNOWN_MODULES:
        class_name = f"{_KNOWN_MODULES[class_name]}.{class_name}"

    state_dict: dict[str, torch.Tensor] = {}
    _collect_state_dict(net, "", state_dict)
    extra = {name: state_dict.pop(name) for name in sorted(_EXTRA_ROOT_BUFFERS & state_dict.keys())}
    return ConvertedNetwork(state_dict=state_dict, config=_extract_config(state), class_name=class_name,
                            extra_buffers=extra)


# ----------------------------------------------------------------------------------------------------------
# Conversion to a diffusers-style pipeline folder and the console entry point.
def convert_network_pickle(
    pkl_path: str | os.PathLike, out_dir: str | os.PathLike, key: str = "G_ema", overwrite: bool = False
) -> Path:
    """Convert an EG3D snapshot into an ``EG3DPipeline`` folder (``model_index.json`` + ``generator/``).

    The folder is written atomically: a failure never leaves a half-written ``out_dir``. The training-only
    ``dataset_label_std`` buffer is not part of the generator and is dropped.
    """
    # Imported lazily: the model modules are heavy and the reader above must stay importable on its own.
    from ..pipelines.eg3d import EG3DPipeline
    from ..utils.io import atomic_directory
    from .generator import EG3DGenerator

    net = load_network_pickle(pkl_path, key=key)
    if not net.class_name.endswith("TriPlaneGenerator"):
        raise NetworkPickleError(f"{pkl_path}[{key!r}] is a {net.class_name}, not an EG3D TriPlaneGenerator")
    generator = EG3DGenerator(**net.config)
    generator.load_state_dict(net.state_dict, strict=True)
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        EG3DPipeline(generator=generator).save_pretrained(tmp)
    return Path(out_dir)


def main(argv: Sequence[str] | None = None) -> int:
    """``my3dgen-convert network.pkl OUT_DIR [--key G_ema] [--overwrite]``."""
    parser = argparse.ArgumentParser(
        prog="my3dgen-convert",
        description="Convert an original NVIDIA EG3D network pickle into a diffusers-style EG3DPipeline folder. "
        "The pickle is read with a restricted unpickler; no code from it is executed.",
    )
    parser.add_argument("pkl", help="network snapshot pickle, e.g. ffhq512-128.pkl")
    parser.add_argument("out_dir", help="output folder (must not exist or be empty unless --overwrite)")
    parser.add_argument("--key", default="G_ema", help="network in the snapshot to convert (default: G_ema)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT_DIR")
    args = parser.parse_args(argv)
    try:
        out = convert_network_pickle(args.pkl, args.out_dir, key=args.key, overwrite=args.overwrite)
    except (FileNotFoundError, FileExistsError, NetworkPickleError, UnsafePickleError) as e:
        print(f"my3dgen-convert: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
