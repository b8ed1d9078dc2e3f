"""The SynthObjects CLIP and text-to-image training scripts at toy size, and the CLIP tokenizer helpers."""

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from my3dgen_hf.synthetic.clip_tokenizer import (
    build_clip_tokenizer,
    find_clip_bpe,
    learn_bpe,
    read_clip_bpe,
    save_clip_tokenizer,
    tokenizer_bpe,
    write_clip_tokenizer_files,
)
from script_loader import load_script

CAPTIONS = [
    "a red chair with a high slatted back, four thin black legs and armrests",
    "a low round blue table with a thick pedestal",
    "a tall grey table with a square top and three thick legs",
]


def _load(name):
    return load_script(f"training/{name}.py")


clip_train = _load("train_synthobjects_clip")
t2i_train = _load("train_synthobjects_t2i")

TINY_CLIP = [
    "--image_size", "16", "--patch_size", "8", "--hidden_size", "16", "--num_heads", "2", "--text_layers", "1", "--vision_layers", "1",
    "--projection_dim", "16", "--pool_size", "8", "--pool_refresh", "1", "--views_per_object", "2", "--train_batch_size", "4",
    "--supersample", "1", "--eval_objects", "4", "--eval_views", "2", "--eval_candidates", "4", "--tokenizer_source", "corpus",
    "--log_steps", "1", "--validation_steps", "0", "--lr_warmup_steps", "1",
]
TINY_T2I = [
    "--resolution", "16", "--vae_block_out_channels", "8", "16", "--vae_norm_num_groups", "4", "--unet_block_out_channels", "8", "16",
    "--unet_norm_num_groups", "4", "--unet_attention_heads", "2", "--text_hidden_size", "16", "--text_layers", "1", "--text_heads", "2",
    "--pool_size", "8", "--pool_refresh", "1", "--views_per_object", "1", "--vae_batch_size", "4", "--train_batch_size", "4",
    "--supersample", "1", "--validation_prompts", "2", "--validation_grid", "2", "--validation_num_inference_steps", "2",
    "--tokenizer_source", "corpus", "--log_steps", "1", "--lr_warmup_steps", "1", "--scaling_factor_images", "16",
]


# ---------------------------------------------------------------------------------------------------- tokenizer
def _write_bpe_file(path, merges):
    """A file in the format of CLIP's bpe_simple_vocab_16e6.txt.gz: a header line, then one merge per line."""
    text = '"bpe_simple_vocab_16e6.txt#version: 0.2\n' + "".join(f"{a} {b}\n" for a, b in merges)
    path.write_bytes(gzip.compress(text.encode("utf-8")))
    return path


def test_clip_bpe_file_converts_to_a_tokenizer_that_round_trips(tmp_path):
    from transformers import CLIPTokenizer

    _, merges = learn_bpe(CAPTIONS)
    bpe = _write_bpe_file(tmp_path / "bpe_simple_vocab_16e6.txt.gz", merges)
    vocab, read = read_clip_bpe(bpe, num_merges=None)
    assert read == merges
    # CLIP's layout: 256 byte symbols, the same with </w>, one token per merge, then the two specials
    assert len(vocab) == 512 + len(merges) + 2 and vocab["a</w>"] == 320 and vocab["!"] == 0
    assert vocab["<|startoftext|>"] == len(vocab) - 2 and vocab["<|endoftext|>"] == len(vocab) - 1
    assert vocab["".join(merges[0])] == 512
    folder = write_clip_tokenizer_files(tmp_path / "tok", vocab, read)
    assert (folder / "merges.txt").read_text().splitlines()[0] == "#version: 0.2"
    tok = CLIPTokenizer.from_pretrained(folder)
    for text in CAPTIONS:
        ids = tok(text).input_ids
        assert ids[0] == tok.bos_token_id == len(vocab) - 2 and ids[-1] == tok.eos_token_id == len(vocab) - 1
        assert tok.decode(ids, skip_special_tokens=True) == text.replace(",", " ,")  # CLIP decodes "back," as "back ,"
    # every word of the corpus is one token; other text falls back to bytes and still round-trips
    assert tok.convert_ids_to_tokens(tok("slatted armrests").input_ids[1:-1]) == ["slatted</w>", "armrests</w>"]
    assert tok.decode(tok("Zebra 42").input_ids, skip_special_tokens=True) == "zebra 4 2"
    # num_merges keeps only the first merges, as CLIP's SimpleTokenizer does
    vocab3, merges3 = read_clip_bpe(bpe, num_merges=3)
    assert merges3 == merges[:3] and len(vocab3) == 512 + 3 + 2


def test_saved_tokenizer_keeps_vocab_and_merges(tmp_path):
    from transformers import CLIPTokenizer

    tok = build_clip_tokenizer(tmp_path / "tok", source="corpus", corpus=CAPTIONS, model_max_length=24)
    assert tok.vocab_source == "corpus"
    assert {"vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json"} <= {p.name for p in (tmp_path / "tok").iterdir()}
    again = CLIPTokenizer.from_pretrained(tmp_path / "tok")
    assert again.model_max_length == 24 and tokenizer_bpe(again) == tokenizer_bpe(tok)
    assert again(CAPTIONS[0]).input_ids == tok(CAPTIONS[0]).input_ids
    save_clip_tokenizer(again, tmp_path / "copy")
    assert json.loads((tmp_path / "copy" / "vocab.json").read_text()) == json.loads((tmp_path / "tok" / "vocab.json").read_text())
    with pytest.raises(ValueError):
        build_clip_tokenizer(source="corpus")
    with pytest.raises(FileNotFoundError):
        build_clip_tokenizer(source="clip", bpe_path=tmp_path / "missing.txt.gz")


def test_real_clip_vocabulary_gives_openai_ids():
    path = find_clip_bpe()
    if path is None:
        pytest.skip("CLIP's bpe_simple_vocab_16e6.txt.gz not found (install open_clip_torch or set MY3DGEN_CLIP_BPE)")
    tok = build_clip_tokenizer(source="clip")
    assert len(tok) == 49408
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


# ---------------------------------------------------------------------------------------------------- data
def test_stream_is_a_pure_function_of_the_step():
    a = clip_train.SynthObjectsStream(seed=1, resolution=16, supersample=1, pool_size=6, refresh=2, views_per_object=2)
    b = clip_train.SynthObjectsStream(seed=1, resolution=16, supersample=1, pool_size=6, refresh=2, views_per_object=2)
    assert list(a.window(3)) == list(range(6, 12))
    a.sample(0, 4)
    a.sample(1, 4)
    ia, ca, oa = a.sample(3, 5)
    ib, cb, ob = b.sample(3, 5)  # without the earlier steps
    assert np.array_equal(ia, ib) and ca == cb and np.array_equal(oa, ob)
    assert set(oa.tolist()) <= set(range(6, 12)) and set(a._objects) == set(range(6, 12))
    assert ia.shape == (5, 16, 16, 3) and ia.dtype == np.uint8
    assert (ia[:, 0, 0] == 255).all()  # white background
    images, captions = clip_train.eval_set(1, "mixed", 2, 3, 16, 1, (5, 40), 100)
    assert images.shape == (2, 3, 16, 16, 3) and len(captions) == 2


# ---------------------------------------------------------------------------------------------------- CLIP
@pytest.fixture(scope="module")
def clip_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("clip")
    result = clip_train.main([*TINY_CLIP, "--output_dir", str(out), "--max_train_steps", "2", "--checkpointing_steps", "1"])
    return out, result


def test_clip_script_saves_a_plain_transformers_clip(clip_run):
    from transformers import CLIPModel, CLIPTokenizer

    from my3dgen_hf.metrics.clip_rprecision import CLIPRPrecision

    out, result = clip_run
    assert result["global_step"] == 2 and len(result["losses"]) == 2 and np.isfinite(result["losses"]).all()
    model_dir = Path(result["model_dir"])
    assert model_dir == out / "model"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert not list(out.glob(".*tmp*"))
    val = json.loads((out / "validation.jsonl").read_text().splitlines()[-1])
    assert {"i2t_top1", "i2t_top5", "t2i_top1", "r_precision@4"} <= set(val) and val["step"] == 2
    assert json.loads((model_dir / "eval.json").read_text())["validation"]["step"] == 2

    model = CLIPModel.from_pretrained(model_dir)
    tok = CLIPTokenizer.from_pretrained(model_dir)
    assert model.config.vision_config.image_size == 16 and tok.model_max_length == 32
    assert json.loads((model_dir / "preprocessor_config.json").read_text())["crop_size"] == {"height": 16, "width": 16}
    metric = CLIPRPrecision(str(model_dir))
    views = [np.full((2, 24, 24, 3), 255, np.uint8), np.zeros((2, 24, 24, 3), np.uint8)]
    res = metric(views, CAPTIONS[:2], candidates=CAPTIONS)
    assert 0.0 <= res.r_precision <= 1.0 and len(res.retrieved) == 2


def test_clip_script_resumes_at_the_saved_step(clip_run, tmp_path):
    out, first = clip_run
    resumed = clip_train.main([*TINY_CLIP, "--output_dir", str(out), "--model_dir", str(tmp_path / "m"), "--max_train_steps", "3",
                               "--checkpointing_steps", "0", "--resume_from_checkpoint", "latest"])
    assert resumed["first_step"] == 2 and resumed["global_step"] == 3 and len(resumed["losses"]) == 1
    # the same third step as an uninterrupted run
    straight = clip_train.main([*TINY_CLIP, "--output_dir", str(tmp_path / "straight"), "--max_train_steps", "3", "--checkpointing_steps", "0"])
    assert straight["losses"][:2] == pytest.approx(first["losses"], rel=1e-5)
    assert resumed["losses"][0] == pytest.approx(straight["losses"][2], rel=1e-4)


def test_retrieval_metrics_on_a_perfect_model():
    class Perfect(torch.nn.Module):
        """Image i embeds as e_i, the text of object i as e_i: every retrieval is right."""

        def __init__(self):
            super().__init__()
            self.logit_scale = torch.nn.Parameter(torch.tensor(1.0))

        def get_image_features(self, pixel_values):
            red = (pixel_values[:, 0, 0, 0] * clip_train.CLIP_STD[0] + clip_train.CLIP_MEAN[0]) * 255
            return torch.nn.functional.one_hot((red / 40).round().long(), 8).float()

        def get_text_features(self, input_ids, attention_mask):
            return torch.nn.functional.one_hot(input_ids[:, 1] % 8, 8).float()

    class Tok:
        def __call__(self, texts, **kw):
            ids = torch.tensor([[0, int(t.split()[-1]), 0] for t in texts])
            return type("T", (), {"input_ids": ids, "attention_mask": torch.ones_like(ids)})

    O, V = 6, 2
    images = np.zeros((O, V, 4, 4, 3), np.uint8)
    for o in range(O):  # object o is red 40 o
        images[o, :, :, :, 0] = 40 * o
    m = clip_train.evaluate_retrieval(Perfect(), Tok(), images, [f"object {o}" for o in range(O)], num_candidates=4)
    assert m["i2t_top1"] == m["t2i_top1"] == m["i2t_top5"] == m["r_precision@4"] == 1.0


# ---------------------------------------------------------------------------------------------------- text-to-image
def _sample_and_check(model_dir):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model_dir, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    image = pipe(CAPTIONS[0], num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (16, 16)
    return pipe


def test_t2i_with_the_clip_text_tower_loads_in_diffusers_and_tunemv3d(clip_run, tmp_path):
    from transformers import CLIPModel
    from tunemv3d_tiny import TINY_INTERACTIVE

    from my3dgen_hf.pipelines.tunemv3d import TuneMV3DPipeline

    clip_dir = Path(clip_run[1]["model_dir"])
    out = tmp_path / "t2i"
    result = t2i_train.main([*TINY_T2I, "--output_dir", str(out), "--clip_model_path", str(clip_dir), "--vae_steps", "2",
                             "--max_train_steps", "2", "--checkpointing_steps", "2", "--validation_steps", "2"])
    assert result["global_step"] == 4 and set(result["seconds_per_step"]) == {"vae", "unet"}
    assert (out / "validation" / "vae-step-000002.png").is_file() and (out / "validation" / "step-000004.png").is_file()
    val = [json.loads(line) for line in (out / "validation.jsonl").read_text().splitlines()]
    assert [v["stage"] for v in val] == ["vae", "unet"] and "clip_r_precision" in val[-1]

    pipe = _sample_and_check(result["model_dir"])
    # the text encoder is the CLIP's text tower, unchanged (frozen), with the CLIP's tokenizer
    clip = CLIPModel.from_pretrained(clip_dir)
    mine = {k.removeprefix("text_model."): v for k, v in pipe.text_encoder.state_dict().items()}
    for name, p in clip.text_model.state_dict().items():
        assert torch.equal(mine[name.removeprefix("text_model.")], p), name
    assert pipe.unet.config.cross_attention_dim == clip.config.text_config.hidden_size
    assert pipe.vae.config.scaling_factor != 0.18215 and pipe.vae.config.latent_channels == 4
    assert (Path(result["model_dir"]) / "tokenizer" / "vocab.json").is_file()

    mv = TuneMV3DPipeline.from_pretrained(result["model_dir"], interactive_kwargs=TINY_INTERACTIVE)
    mv.set_progress_bar_config(disable=True)
    views = mv(CAPTIONS[1], num_views=2, num_inference_steps=1, output_type="np").images
    assert views.shape == (2, 16, 16, 3)


def test_t2i_joint_text_encoder_resumes_at_the_saved_step(tmp_path):
    out = tmp_path / "t2i"
    common = [*TINY_T2I, "--output_dir", str(out), "--vae_steps", "2", "--validation_steps", "0"]
    first = t2i_train.main([*common, "--max_train_steps", "1", "--checkpointing_steps", "1"])
    assert first["global_step"] == 3 and sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    scale = json.loads((out / "model" / "vae" / "config.json").read_text())["scaling_factor"]
    resumed = t2i_train.main([*common, "--max_train_steps", "2", "--checkpointing_steps", "0", "--resume_from_checkpoint", "latest"])
    assert resumed["first_step"] == 3 and resumed["global_step"] == 4 and len(resumed["losses"]) == 1
    assert json.loads((out / "model" / "vae" / "config.json").read_text())["scaling_factor"] == pytest.approx(scale)
    pipe = _sample_and_check(resumed["model_dir"])
    assert pipe.text_encoder.config.hidden_size == 16
    # resuming inside the VAE stage continues it
    vae_only = t2i_train.main([*common, "--output_dir", str(tmp_path / "v"), "--vae_steps", "3", "--max_train_steps", "0",
                               "--checkpointing_steps", "1"])
    assert vae_only["global_step"] == 3
    again = t2i_train.main([*common, "--output_dir", str(tmp_path / "v"), "--vae_steps", "3", "--max_train_steps", "1",
                            "--checkpointing_steps", "0", "--resume_from_checkpoint", str(tmp_path / "v" / "checkpoint-2")])
    assert again["first_step"] == 2 and again["global_step"] == 4 and set(again["seconds_per_step"]) == {"vae", "unet"}
