"""CLIP R-precision of multi-view generations, with view-majority voting (TuneMV3D's evaluation).

For each object, every generated view retrieves the most similar of its candidate texts (the object's prompt and
99 distractors: 100 candidates) by CLIP cosine similarity. The object's retrieved text is the one retrieved by most
views; a tie is broken by the highest single view-text similarity among the tied texts' votes. R-precision (R = 1)
is the fraction of objects whose retrieved text is their prompt.

The CLIP model is pluggable: a ``transformers.CLIPModel`` (or a local path / Hub id to load one, with its
tokenizer), or any object with ``get_image_features(pixel_values=...)`` and ``get_text_features(input_ids=...,
attention_mask=...)`` plus a tokenizer. Images are preprocessed in plain torch (resize the short side, centre crop,
CLIP normalization), so torchvision is never needed.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class RPrecisionResult:
    """``r_precision`` in [0, 1]; per object: ``retrieved`` (index into its candidates), ``correct``, ``votes``
    (views per candidate) and the ``candidates`` texts when known."""

    r_precision: float
    retrieved: list[int]
    correct: list[bool]
    votes: list[list[int]]
    candidates: Optional[list[list[str]]] = field(default=None, repr=False)


def view_majority_vote(similarity: torch.Tensor) -> tuple[int, list[int]]:
    """similarity [V, K] of V views to K texts -> (retrieved text index, votes per text)."""
    best = similarity.argmax(dim=1)  # [V]: each view's retrieval
    votes = torch.bincount(best, minlength=similarity.shape[1])
    tied = (votes == votes.max()).nonzero()[:, 0]
    # Tie-break: the highest similarity any view gave to a text it voted for.
    strength = torch.stack([similarity[best == k, k].max() for k in tied])
    return int(tied[strength.argmax()]), votes.tolist()


def r_precision_from_embeddings(
    image_embeds: Union[torch.Tensor, Sequence[torch.Tensor]],
    text_embeds: Union[torch.Tensor, Sequence[torch.Tensor]],
    targets: Sequence[int],
) -> RPrecisionResult:
    """image_embeds: [O, V, D] (or O tensors [V_o, D]); text_embeds: shared [K, D] or per object [O, K, D] (or O
    tensors [K_o, D]); targets: the index of each object's prompt among its candidates."""
    if len(image_embeds) != len(targets):
        raise ValueError(f"{len(image_embeds)} objects but {len(targets)} targets")
    shared = isinstance(text_embeds, torch.Tensor) and text_embeds.ndim == 2
    retrieved, votes = [], []
    for o, views in enumerate(image_embeds):
        texts = text_embeds if shared else text_embeds[o]
        sim = F.normalize(views.float(), dim=-1) @ F.normalize(texts.float(), dim=-1).T  # [V, K]
        k, v = view_majority_vote(sim)
        retrieved.append(k)
        votes.append(v)
    correct = [k == int(t) for k, t in zip(retrieved, targets)]
    return RPrecisionResult(float(np.mean(correct)) if correct else 0.0, retrieved, correct, votes)


def preprocess_images(images, image_size: int = 224) -> torch.Tensor:
    """PIL list, uint8 array [V, H, W, 3] or float tensor [V, 3, H, W] in [0, 1] -> CLIP pixel values [V, 3, S, S]."""
    if isinstance(images, torch.Tensor):
        x = images.float()
    else:
        arr = np.stack([np.asarray(im.convert("RGB") if hasattr(im, "convert") else im) for im in images])
        x = torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0
    h, w = x.shape[-2:]
    scale = image_size / min(h, w)
    size = (max(image_size, round(h * scale)), max(image_size, round(w * scale)))
    x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    top, left = (size[0] - image_size) // 2, (size[1] - image_size) // 2
    x = x[..., top : top + image_size, left : left + image_size]
    mean, std = torch.tensor(CLIP_MEAN)[:, None, None], torch.tensor(CLIP_STD)[:, None, None]
    return (x - mean) / std


def _features(output) -> torch.Tensor:
    """transformers 5 returns a model output whose ``pooler_output`` is the projected embedding; 4.x a tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class CLIPRPrecision:
    """``CLIPRPrecision(model, tokenizer)(generations, prompts)`` -> :class:`RPrecisionResult`.

    ``model``: a CLIP model object, or a local path / Hub id loaded with ``transformers.CLIPModel``;
    ``"my3dgen-hf/synthobjects-clip"`` is the small SynthObjects CLIP that ships with the package (no download).
    """

    def __init__(self, model, tokenizer=None, device=None, image_size: Optional[int] = None, batch_size: int = 64):
        if isinstance(model, (str, os.PathLike)):
            from transformers import CLIPModel, CLIPTokenizer

            from ..assets import resolve_pretrained

            model = resolve_pretrained(str(model))
            tokenizer = tokenizer or CLIPTokenizer.from_pretrained(model)
            model = CLIPModel.from_pretrained(model)
        if tokenizer is None:
            raise ValueError("pass the tokenizer that goes with the CLIP model")
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        config = getattr(getattr(model, "config", None), "vision_config", None)
        self.image_size = image_size or getattr(config, "image_size", 224)

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), self.batch_size):
            tok = self.tokenizer(list(texts[i : i + self.batch_size]), padding=True, truncation=True, return_tensors="pt")
            out.append(_features(self.model.get_text_features(input_ids=tok.input_ids.to(self.device), attention_mask=tok.attention_mask.to(self.device))))
        return torch.cat(out).float().cpu()

    @torch.no_grad()
    def encode_images(self, images) -> torch.Tensor:
        x = preprocess_images(images, self.image_size)
        dtype = next(self.model.parameters()).dtype
        out = [_features(self.model.get_image_features(pixel_values=x[i : i + self.batch_size].to(self.device, dtype))) for i in range(0, len(x), self.batch_size)]
        return torch.cat(out).float().cpu()

    def __call__(
        self,
        generations: Sequence,
        prompts: Sequence[str],
        candidates: Union[None, Sequence[str], Sequence[Sequence[str]]] = None,
        num_candidates: int = 100,
        seed: int = 0,
    ) -> RPrecisionResult:
        """``generations``: per object, its views (PIL list, uint8 [V, H, W, 3] or float [V, 3, H, W] in [0, 1]);
        ``prompts``: each object's prompt. ``candidates``: None (distractors drawn from the other prompts), a pool of
        distractor texts (the prompts are added to it), or an explicit candidate list per object (containing its
        prompt). Each object gets its prompt + ``num_candidates - 1`` distractors drawn (seeded) from the pool."""
        if len(generations) != len(prompts):
            raise ValueError(f"{len(generations)} generations but {len(prompts)} prompts")
        if candidates is not None and len(candidates) and not isinstance(candidates[0], str):
            per_object = [list(c) for c in candidates]
            for p, c in zip(prompts, per_object):
                if p not in c:
                    raise ValueError(f"the candidates of {p!r} do not contain it")
        else:
            pool = list(dict.fromkeys([*prompts, *(candidates or [])]))
            rng = random.Random(seed)
            per_object = []
            for p in prompts:
                others = [t for t in pool if t != p]
                chosen = [p, *rng.sample(others, min(num_candidates - 1, len(others)))]
                rng.shuffle(chosen)  # no position favours the prompt in exact ties
                per_object.append(chosen)
        texts = list(dict.fromkeys(t for c in per_object for t in c))
        text_embeds = self.encode_text(texts)
        row = {t: i for i, t in enumerate(texts)}
        per_object_embeds = [text_embeds[[row[t] for t in c]] for c in per_object]
        image_embeds = [self.encode_images(views) for views in generations]
        result = r_precision_from_embeddings(image_embeds, per_object_embeds, [c.index(p) for p, c in zip(prompts, per_object)])
        result.candidates = per_object
        return result


def clip_r_precision(generations, prompts, model, tokenizer=None, candidates=None, num_candidates: int = 100, seed: int = 0, device=None) -> RPrecisionResult:
    """One-call form of :class:`CLIPRPrecision`."""
    return CLIPRPrecision(model, tokenizer, device=device)(generations, prompts, candidates, num_candidates, seed)
