"""Safe reader of original EG3D network-snapshot pickles (my3dgen_hf.eg3d.convert)."""

from __future__ import annotations

import builtins
import importlib
import io
import json
import os
import pickle
import subprocess
import sys
import types
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from my3dgen_hf.eg3d.convert import (
    ConvertedNetwork,
    NetworkKeyError,
    NetworkPickleError,
    SafeUnpickler,
    UnsafePickleError,
    load_network_pickle,
)

# ----------------------------------------------------------------------------------------------------------
# The genuine fixture snapshot


@pytest.fixture(scope="module")
def fixture_net(eg3d_fixture_dir) -> ConvertedNetwork:
    modules_before = set(sys.modules)
    net = load_network_pickle(eg3d_fixture_dir / "network.pkl")
    # Reading must not import anything the pickle names (the original loader would import these).
    imported = {m for m in set(sys.modules) - modules_before if m.split(".")[0] in ("training", "torch_utils", "dnnlib")}
    assert not imported
    return net


def test_fixture_state_dict_matches(fixture_net, eg3d_fixture_dir):
    expected = load_file(str(eg3d_fixture_dir / "state_dict.safetensors"))
    assert set(fixture_net.state_dict) == set(expected)
    assert len(fixture_net.state_dict) == 176
    for name, tensor in expected.items():
        got = fixture_net.state_dict[name]
        assert got.dtype == torch.float32 and got.device.type == "cpu" and got.is_contiguous(), name
        assert torch.equal(got, tensor), name
    assert fixture_net.extra_buffers == {}


def test_fixture_config_matches(fixture_net, eg3d_fixture_dir):
    expected = json.loads((eg3d_fixture_dir / "config.json").read_text())
    class_name = expected.pop("class_name")
    assert fixture_net.config == expected
    assert fixture_net.class_name == class_name == "training.triplane.TriPlaneGenerator"
    assert json.loads(json.dumps(fixture_net.config)) == fixture_net.config


def test_fixture_wrong_key_lists_available(eg3d_fixture_dir):
    with pytest.raises(NetworkKeyError) as info:
        load_network_pickle(eg3d_fixture_dir / "network.pkl", key="G_emma")
    msg = str(info.value)
    assert "G_emma" in msg
    for key in ("'G'", "'G_ema'", "'D'", "'augment_pipe'"):
        assert key in msg
    assert isinstance(info.value, KeyError)


def test_fixture_other_network(eg3d_fixture_dir):
    net = load_network_pickle(eg3d_fixture_dir / "network.pkl", key="D")
    assert net.class_name == "training.dual_discriminator.DualDiscriminator"
    assert net.config["c_dim"] == 25 and net.state_dict


def test_truncated_pickle(eg3d_fixture_dir, tmp_path):
    data = (eg3d_fixture_dir / "network.pkl").read_bytes()
    bad = tmp_path / "truncated.pkl"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(NetworkPickleError, match="truncated") as info:
        load_network_pickle(bad)
    assert str(bad) in str(info.value)


def test_not_a_pickle(tmp_path):
    text = tmp_path / "readme.pkl"
    text.write_text("this is not a pickle\n")
    with pytest.raises(NetworkPickleError, match="does not start like a pickle"):
        load_network_pickle(text)
    zipped = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(2)}, zipped)
    with pytest.raises(NetworkPickleError, match="zip archive"):
        load_network_pickle(zipped)


def test_missing_file(tmp_path):
    missing = tmp_path / "nope" / "ffhq512-128.pkl"
    with pytest.raises(FileNotFoundError) as info:
        load_network_pickle(missing)
    assert str(missing) in str(info.value)


# ----------------------------------------------------------------------------------------------------------
# Synthetic snapshots written in the original format, with stand-in modules registered only while pickling


@pytest.fixture
def fake_eg3d_modules(monkeypatch):
    """Register throwaway ``torch_utils.persistence``/``dnnlib.util``/``training.triplane`` so pickle can
    reference them by name exactly as genuine snapshots do; they are removed again after the test."""
    ns = types.SimpleNamespace()

    def module(name: str) -> types.ModuleType:
        mod = types.ModuleType(name)
        monkeypatch.setitem(sys.modules, name, mod)
        return mod

    module("torch_utils")
    persistence = module("torch_utils.persistence")
    module("dnnlib")
    util = module("dnnlib.util")
    module("training")
    triplane = module("training.triplane")

    def _reconstruct_persistent_obj(meta):  # never called: the reader substitutes its own
        raise AssertionError("the real reconstruct function must not run")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj

    class EasyDict(dict):
        pass

    EasyDict.__module__, EasyDict.__qualname__ = "dnnlib.util", "EasyDict"
    util.EasyDict = EasyDict

    class OSGDecoder:  # pickled by class reference, like EG3D's non-persistent submodules
        pass

    OSGDecoder.__module__, OSGDecoder.__qualname__ = "training.triplane", "OSGDecoder"
    triplane.OSGDecoder = OSGDecoder

    class Persistent:
        """Pickles like a @persistent_class instance: reconstruct function + meta (with module source)."""

        def __init__(self, class_name, state, module_src="# source\n"):
            self.meta = dict(type="class", version=6, module_src=module_src, class_name=class_name, state=state)

        def __reduce__(self):
            return (_reconstruct_persistent_obj, (self.meta,))

    ns.EasyDict, ns.OSGDecoder, ns.Persistent = EasyDict, OSGDecoder, Persistent
    return ns


def _module_state(params=None, buffers=None, modules=None, non_persistent=(), **attrs):
    state = dict(training=False, _parameters=OrderedDict(params or {}), _buffers=OrderedDict(buffers or {}),
                 _non_persistent_buffers_set=set(non_persistent), _forward_hooks=OrderedDict(),
                 _modules=OrderedDict(modules or {}))
    state.update(attrs)
    return state


@pytest.mark.parametrize("protocol", [2, 4])
def test_synthetic_snapshot(fake_eg3d_modules, tmp_path, protocol):
    ns = fake_eg3d_modules
    marker = tmp_path / "module_src_ran"
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Softplus())  # real torch.nn modules
    decoder = ns.OSGDecoder()
    decoder.__dict__.update(_module_state(modules={"net": mlp}, hidden_dim=64))
    base = torch.randn(6, 5)
    w = torch.nn.Parameter(torch.randn(3, 2).half())
    root_state = _module_state(
        params={"w": w, "unused": None},
        buffers={"view_t": base.t(), "view_row": base[2], "dataset_label_std": torch.rand(25), "scratch": torch.ones(1)},
        non_persistent=["scratch"],
        modules={"decoder": decoder, "absent": None},
        _init_args=(512, 25),
        _init_kwargs={"w_dim": 512, "mapping_kwargs": ns.EasyDict(num_layers=2),
                      "sr_kwargs": {"gain": np.float64(0.5), "n": np.int64(3), "flag": np.bool_(True)}},
        rendering_kwargs={"ray_start": 2.25, "avg_camera_pivot": (0, 0, 0.2)},
        neural_rendering_resolution=128,
        weight_gain=np.float32(0.25),
    )
    # A malicious module_src must be ignored, never exec'd.
    evil_src = f"import os\nos.system('touch {marker}')\n"
    snapshot = {"G": None, "D": None, "augment_pipe": None, "training_set_kwargs": {"resolution": 512},
                "G_ema": ns.Persistent("TriPlaneGenerator", root_state, module_src=evil_src)}
    path = tmp_path / "snap.pkl"
    path.write_bytes(pickle.dumps(snapshot, protocol=protocol))

    net = load_network_pickle(path)
    assert not marker.exists()
    assert net.class_name == "training.triplane.TriPlaneGenerator"
    expected = {"w": w.detach().float(), "view_t": base.t(), "view_row": base[2]}
    expected.update({f"decoder.net.{k}": v for k, v in mlp.state_dict().items()})
    assert list(net.state_dict) == list(expected)  # torch's state_dict() order, skipping None / non-persistent
    for name, tensor in expected.items():
        got = net.state_dict[name]
        assert got.dtype == torch.float32 and got.is_contiguous()
        assert torch.equal(got, tensor), name
    assert list(net.extra_buffers) == ["dataset_label_std"]
    assert torch.equal(net.extra_buffers["dataset_label_std"], root_state["_buffers"]["dataset_label_std"])
    assert net.config == {
        "z_dim": 512, "c_dim": 25, "w_dim": 512, "mapping_kwargs": {"num_layers": 2},
        "sr_kwargs": {"gain": 0.5, "n": 3, "flag": True},
        "rendering_kwargs": {"ray_start": 2.25, "avg_camera_pivot": [0, 0, 0.2]},
        "neural_rendering_resolution": 128,
    }
    assert type(net.config["mapping_kwargs"]) is dict and type(net.config["sr_kwargs"]["gain"]) is float
    json.dumps(net.config)


# ----------------------------------------------------------------------------------------------------------
# Malicious pickles: refused before anything runs


class _Reduce:
    """Pickles as ``func(*args)``: what an attacker's ``__reduce__`` would produce."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


def _payloads(marker: Path) -> dict[str, tuple[object, str]]:
    touch = f"open({str(marker)!r}, 'w').close()"
    return {
        "os.system": (_Reduce(os.system, (f"touch {marker}",)), "system"),
        "eval": (_Reduce(builtins.eval, (touch,)), "eval"),
        "exec": (_Reduce(builtins.exec, (touch,)), "exec"),
        # Protocol 2 writes Python-2 spellings (subprocess.Popen -> commands.Popen, builtins -> __builtin__).
        "subprocess.Popen": (_Reduce(subprocess.Popen, (["touch", str(marker)],)), "Popen"),
        "import_module": (_Reduce(importlib.import_module, ("os",)), "importlib.import_module"),
        "getattr": (_Reduce(builtins.getattr, ("text", "upper")), "getattr"),
    }


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("kind", ["os.system", "eval", "exec", "subprocess.Popen", "import_module", "getattr"])
def test_malicious_pickle_refused(tmp_path, protocol, kind):
    marker = tmp_path / "pwned"
    payload, refused_name = _payloads(marker)[kind]
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(payload, protocol=protocol))
    with pytest.raises(UnsafePickleError) as info:
        load_network_pickle(path)
    msg = str(info.value)
    assert refused_name in msg and "never executes code" in msg and str(path) in msg
    assert isinstance(info.value, pickle.UnpicklingError)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4])
def test_malicious_object_nested_in_snapshot(fake_eg3d_modules, tmp_path, protocol):
    ns = fake_eg3d_modules
    marker = tmp_path / "pwned"
    evil = _Reduce(os.system, (f"touch {marker}",))
    decoder = ns.OSGDecoder()
    decoder.__dict__.update(_module_state(params={"w": torch.zeros(2)}, hidden_dim=evil))
    g = ns.Persistent("TriPlaneGenerator", _module_state(modules={"decoder": decoder}, _init_kwargs={"z_dim": 512}))
    snapshot = {"G": g, "D": None, "G_ema": g, "augment_pipe": None, "training_set_kwargs": {}}
    path = tmp_path / "snap.pkl"
    path.write_bytes(pickle.dumps(snapshot, protocol=protocol))
    with pytest.raises(UnsafePickleError, match="system"):
        load_network_pickle(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "module,name",
    [
        ("builtins", "eval"), ("builtins", "exec"), ("builtins", "getattr"), ("builtins", "__import__"),
        ("builtins", "open"), ("__builtin__", "eval"), ("os", "system"), ("posix", "system"), ("nt", "system"),
        ("subprocess", "Popen"), ("subprocess", "run"), ("importlib", "import_module"), ("runpy", "run_path"),
        ("torch", "load"), ("numpy", "load"), ("numpy.core.multiarray", "_reconstruct"), ("pickle", "loads"),
        ("torch_utils.persistence", "_module_to_src"), ("dnnlib.util", "call_func_by_name"),
        ("collections", "namedtuple"), ("copyreg", "add_extension"), ("_codecs", "decode"),
    ],
)
def test_find_class_refuses(module, name):
    with pytest.raises(UnsafePickleError, match=f"`{module}.{name}`"):
        SafeUnpickler(io.BytesIO(b"")).find_class(module, name)


def test_stub_classes_do_not_import():
    unpickler = SafeUnpickler(io.BytesIO(b""))
    cls = unpickler.find_class("training.triplane", "OSGDecoder")
    assert cls.class_name == "training.triplane.OSGDecoder"
    assert unpickler.find_class("training.triplane", "OSGDecoder") is cls
    assert unpickler.find_class("torch.nn.modules.container", "Sequential") is not torch.nn.Sequential
    assert "training.triplane" not in sys.modules


def test_malicious_storage_blob_refused(tmp_path):
    """The tensor-storage blobs are decoded by torch's weights-only unpickler, which refuses code too."""
    marker = tmp_path / "pwned"
    blob = pickle.dumps(_Reduce(os.system, (f"touch {marker}",)), protocol=2)
    path = tmp_path / "evil_storage.pkl"
    path.write_bytes(pickle.dumps(_Reduce(torch.storage._load_from_bytes, (blob,)), protocol=4))
    with pytest.raises(NetworkPickleError, match="storage could not be decoded safely"):
        load_network_pickle(path)
    assert not marker.exists()
