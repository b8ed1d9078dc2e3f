"""Share identity adapters on the Hugging Face Hub: adapter file + model card + sample renders.

    push_adapter_to_hub(pipe, "user/my-face-adapter", token=...)
    pipe.load_lora_weights("user/my-face-adapter", revision="main")
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .lora.loader import AdapterError, read_adapter_file
from .utils.io import PathLike

HUB_CARDS = Path(__file__).resolve().parents[1] / "hub_cards"
ADAPTER_CARD_TEMPLATE = HUB_CARDS / "adapter_card.md"
SAMPLES_FILE = "samples.png"
SUMMARY_FILE = "training_summary.json"
TAGS = ["my3dgen", "eg3d", "lora", "3d", "3d-aware-gan", "personalization", "diffusers"]


def _human_bytes(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n < 2**20 else f"{n / 2**20:.2f} MiB"


@torch.no_grad()
def render_sample_grid(pipe, path: PathLike, ws: Optional[torch.Tensor] = None, seeds=(0, 1, 2), yaws=(-0.35, 0.0, 0.35)) -> Path:
    """A grid (rows: identities, columns: yaw) of the active adapter's renders, saved as PNG."""
    from PIL import Image

    if ws is None:
        ws = pipe.get_ws(seed=list(seeds))
    rows = [np.concatenate(list(pipe(ws=ws[i : i + 1], yaw=list(yaws), output_type="np").images), axis=1) for i in range(len(ws))]
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)
    return Path(path)


def render_model_card(
    adapter_dir: Path, repo_id: str, base_model: str, adapter_name: str = "identity", license: str = "apache-2.0", metrics: Optional[dict] = None
):
    """Fill ``hub_cards/adapter_card.md`` from the adapter file and the training summary in ``adapter_dir``."""
    from huggingface_hub import ModelCard, ModelCardData

    if not ADAPTER_CARD_TEMPLATE.is_file():
        raise FileNotFoundError(f"model card template missing: {ADAPTER_CARD_TEMPLATE} (run from a checkout or an editable install)")
    weights = adapter_dir / "pytorch_lora_weights.safetensors"
    tensors, metadata = read_adapter_file(weights)
    meta = {k.split(".", 1)[1]: v for k, v in metadata.items() if k.startswith("generator.")}
    ours = meta.get("my3dgen", {})
    summary = json.loads((adapter_dir / SUMMARY_FILE).read_text()) if (adapter_dir / SUMMARY_FILE).is_file() else {}
    metrics = {**summary.get("metrics", {}), **(metrics or {})}
    data = ModelCardData(
        base_model=base_model, library_name="my3dgen-hf", license=license, tags=TAGS, pipeline_tag="image-to-3d",
        model_name=repo_id.split("/")[-1],
    )
    trainable = summary.get("trainable_parameters", sum(v.numel() for v in tensors.values()))
    base_url = base_model if base_model.startswith(("http://", "https://")) else f"https://huggingface.co/{base_model}"
    return ModelCard.from_template(
        data,
        template_path=str(ADAPTER_CARD_TEMPLATE),
        repo_id=repo_id,
        base_model_url=base_url,
        adapter_name=adapter_name,
        rank=meta.get("r", "?"),
        alpha=meta.get("lora_alpha", "?"),
        decomposition=ours.get("decomposition", "im2col"),
        trainable_parameters=f"{trainable:,}",
        adapter_bytes=_human_bytes(weights.stat().st_size),
        fingerprint=ours.get("base_model_fingerprint", "n/a"),
        num_images=summary.get("num_images", "n/a"),
        steps=summary.get("steps", "n/a"),
        wall_time=f"{summary['wall_time_s']:.0f} s" if "wall_time_s" in summary else "n/a",
        final_loss=f"{summary['final_loss']:.4f}" if "final_loss" in summary else "n/a",
        metrics={k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in metrics.items()},
        samples_file=SAMPLES_FILE,
        samples_caption="Rows: identities; columns: yaw -0.35, 0, +0.35 rad." if (adapter_dir / SAMPLES_FILE).is_file() else "",
    )


def push_adapter_to_hub(
    pipe_or_dir,
    repo_id: str,
    private: bool = False,
    token: Optional[str] = None,
    commit_message: Optional[str] = None,
    base_model: Optional[str] = None,
    adapter_name: Optional[str] = None,
    revision: Optional[str] = None,
    endpoint: Optional[str] = None,
    metrics: Optional[dict] = None,
) -> str:
    """Upload an adapter with its model card and a grid of sample renders; returns the commit URL.

    ``pipe_or_dir`` is an ``EG3DPipeline`` with a loaded adapter (the active one, or ``adapter_name``) or a folder
    written by ``training/personalize.py`` / ``pipe.save_lora_weights``."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(endpoint=endpoint, token=token)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if isinstance(pipe_or_dir, (str, os.PathLike)):
            src = Path(pipe_or_dir)
            if not (src / "pytorch_lora_weights.safetensors").is_file():
                raise AdapterError(f"{src} holds no pytorch_lora_weights.safetensors; save the adapter there first")
            for f in src.iterdir():
                if f.is_file() and f.suffix in (".safetensors", ".json", ".png", ".md", ".pt"):
                    (tmp / f.name).write_bytes(f.read_bytes())
            if base_model is None and (src / SUMMARY_FILE).is_file():
                base_model = json.loads((src / SUMMARY_FILE).read_text()).get("base_model")
        else:
            pipe = pipe_or_dir
            pipe.save_lora_weights(tmp, adapter_name=adapter_name)
            if adapter_name:
                pipe.set_adapters([adapter_name])
            render_sample_grid(pipe, tmp / SAMPLES_FILE)
            base_model = base_model or getattr(pipe, "name_or_path", None) or pipe.generator.config.get("_name_or_path")
        if not base_model:
            raise ValueError("say which base model the adapter is for: pass base_model='user/prior' (it goes into the model card)")
        card = render_model_card(tmp, repo_id, str(base_model), adapter_name or "identity", metrics=metrics)
        card.save(tmp / "README.md")
        try:
            url = api.create_repo(repo_id, private=private, exist_ok=True, token=token)
            info = api.upload_folder(
                repo_id=repo_id, folder_path=str(tmp), commit_message=commit_message or "Upload My3DGen identity adapter",
                token=token, revision=revision,
            )
        except HfHubHTTPError as e:
            status = getattr(getattr(e, "response", None), "status_code", None)
            if status == 401:
                raise AdapterError("the Hub refused the upload: no valid token; pass token= or run `hf auth login`") from e
            if status == 403:
                raise AdapterError(f"the token cannot write to {repo_id}: use a token with write access to that namespace") from e
            raise
    return getattr(info, "commit_url", str(url))
