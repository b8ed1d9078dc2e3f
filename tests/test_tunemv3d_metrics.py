"""CLIP R-precision with view-majority voting: constructed embeddings with known answers, and a tiny CLIPModel."""

import numpy as np
import pytest
import torch
from transformers import CLIPConfig, CLIPModel

from my3dgen_hf.metrics.clip_rprecision import CLIPRPrecision, clip_r_precision, preprocess_images, r_precision_from_embeddings, view_majority_vote
from tunemv3d_tiny import tiny_tokenizer


def _onehot(i, d=8):
    return torch.eye(d)[i]


def test_majority_vote_and_tie_break():
    sim = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.1, 0.7, 0.0]])
    assert view_majority_vote(sim) == (1, [1, 2, 0])  # two views retrieve text 1
    tie = torch.tensor([[0.6, 0.5, 0.0], [0.1, 0.9, 0.0]])
    assert view_majority_vote(tie) == (1, [1, 1, 0])  # one vote each: text 1 has the highest similarity


def test_r_precision_from_constructed_embeddings():
    texts = torch.stack([_onehot(k) for k in range(4)])  # 4 candidate texts, orthogonal
    near = lambda k, other, w: _onehot(k) + w * _onehot(other)  # noqa: E731
    objects = torch.stack(
        [
            torch.stack([near(0, 1, 0.1), near(0, 2, 0.2), near(1, 0, 0.1)]),  # 2 of 3 views retrieve text 0: right
            torch.stack([near(2, 1, 0.1), near(3, 1, 0.1), near(3, 2, 0.1)]),  # majority says 3, the prompt is 2: wrong
        ]
    )
    result = r_precision_from_embeddings(objects, texts, targets=[0, 2])
    assert result.retrieved == [0, 3] and result.correct == [True, False] and result.r_precision == 0.5
    assert result.votes[0] == [2, 1, 0, 0]
    tie = [torch.stack([near(1, 0, 0.5), near(2, 0, 0.0)])]  # one vote each for 1 and 2; 2's is the surer one
    assert r_precision_from_embeddings(tie, texts, targets=[2]).r_precision == 1.0
    # Per-object candidate sets [O, K, D] and scale invariance (cosine similarity).
    per_object = torch.stack([texts, texts.flip(0)])
    assert r_precision_from_embeddings(objects * 3.0, per_object, targets=[0, 0]).retrieved == [0, 0]


class _FixedCLIP(torch.nn.Module):
    """A pluggable 'CLIP': image features = mean colour, text features looked up by the token ids' first letter."""

    def __init__(self, tokenizer):
        super().__init__()
        self.tokenizer = tokenizer
        self.p = torch.nn.Parameter(torch.zeros(1))
        self.colours = {"r": [1.0, 0, 0], "g": [0, 1.0, 0], "b": [0, 0, 1.0]}

    def get_image_features(self, pixel_values):
        return pixel_values.mean(dim=(2, 3))

    def get_text_features(self, input_ids, attention_mask=None):
        words = self.tokenizer.batch_decode(input_ids, skip_special_tokens=True)
        mean, std = torch.tensor([0.48145466, 0.4578275, 0.40821073]), torch.tensor([0.26862954, 0.26130258, 0.27577711])
        return torch.stack([(torch.tensor(self.colours[w.strip()[0]]) - mean) / std for w in words])


def test_pluggable_model_end_to_end():
    tok = tiny_tokenizer()
    scorer = CLIPRPrecision(_FixedCLIP(tok), tok, image_size=8)
    red = np.zeros((3, 16, 20, 3), np.uint8)
    red[..., 0] = 255
    blue = torch.zeros(4, 3, 12, 12)
    blue[:, 2] = 1.0
    blue[0, :] = torch.tensor([0.0, 1.0, 0.0])[:, None, None]  # one view is green: still a majority of blue
    result = scorer([red, blue], ["red", "blue"], candidates=["green"])
    assert result.r_precision == 1.0
    assert all(len(c) == 3 and p in c for c, p in zip(result.candidates, ["red", "blue"]))
    assert result.votes[1][result.candidates[1].index("green")] == 1
    result = scorer([red, blue], ["green", "blue"], candidates=[["green", "red"], ["red", "blue"]])
    assert result.correct == [False, True]
    with pytest.raises(ValueError, match="do not contain"):
        scorer([red], ["blue"], candidates=[["red", "green"]])


def test_tiny_random_clip_model(tmp_path):
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=514, hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1, max_position_embeddings=16,
                         bos_token_id=512, eos_token_id=513, pad_token_id=513),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1, image_size=32, patch_size=8),
        projection_dim=8,
    )
    model = CLIPModel(config).eval()
    tok = tiny_tokenizer()
    model.save_pretrained(tmp_path / "clip")
    tok.save_pretrained(tmp_path / "clip")
    prompts = [f"object {i}" for i in range(5)]
    views = [torch.rand(3, 3, 40, 40, generator=torch.Generator().manual_seed(i)) for i in range(5)]
    a = clip_r_precision(views, prompts, model, tok, num_candidates=4)
    b = clip_r_precision(views, prompts, str(tmp_path / "clip"), num_candidates=4)  # loaded from a local folder
    assert 0.0 <= a.r_precision <= 1.0 and len(a.retrieved) == 5 and all(len(c) == 4 for c in a.candidates)
    assert a.retrieved == b.retrieved and a.candidates == b.candidates
    # The embeddings path gives the same answer as the model path.
    scorer = CLIPRPrecision(model, tok)
    texts = [scorer.encode_text(c) for c in a.candidates]
    images = [scorer.encode_images(v) for v in views]
    targets = [c.index(p) for c, p in zip(a.candidates, prompts)]
    assert r_precision_from_embeddings(images, texts, targets).retrieved == a.retrieved
    assert preprocess_images(views[0], 32).shape == (3, 3, 32, 32)
