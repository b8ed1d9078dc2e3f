"""Models that ship inside the package, found by name without any network access."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

ASSETS = Path(__file__).resolve().parent

# Hub-style name -> folder under my3dgen_hf/assets/
SHIPPED_MODELS = {
    "my3dgen-hf/demo-synthheads": "demo-synthheads",
    "my3dgen-hf/synthheads-identity-encoder": "synthheads-identity-encoder",
    "my3dgen-hf/demo-synthobjects": "demo-synthobjects",
    "my3dgen-hf/synthobjects-clip": "synthobjects-clip",
}
DEFAULT_EG3D_MODEL = "my3dgen-hf/demo-synthheads"
DEFAULT_TUNEMV3D_MODEL = "my3dgen-hf/demo-synthobjects"


def resolve_pretrained(name_or_path: Union[str, os.PathLike]) -> Union[str, os.PathLike]:
    """A shipped model's local folder for its name; anything else (a local path, another Hub id) unchanged.
    An existing local folder of the same name wins over the shipped copy."""
    if isinstance(name_or_path, str) and name_or_path in SHIPPED_MODELS and not Path(name_or_path).exists():
        folder = ASSETS / SHIPPED_MODELS[name_or_path]
        if not folder.is_dir():
            raise FileNotFoundError(f"{name_or_path} should ship with my3dgen-hf at {folder}, but it is missing: reinstall the package")
        return str(folder)
    return name_or_path
