"""The supplement's ablation switches: no raw x_t into encoder O, and rendering features instead of x0."""

import json

import pytest
import torch

from my3dgen_hf.pipelines.tunemv3d import TuneMV3DPipeline
from my3dgen_hf.tunemv3d import TuneMV3DInteractiveModel, TuneMV3DModulationModel
from my3dgen_hf.tunemv3d.modulation import NoRawXtEncoder
from my3dgen_hf.tunemv3d.toy_data import make_toy_dataset
from tunemv3d_tiny import TINY_INTERACTIVE, save_tiny_sd, tiny_sd_components
from script_loader import load_script



def _randomize(modulation, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for conv in [*modulation.controlnet_down_blocks, modulation.controlnet_mid_block]:
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.1)
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=g) * 0.1)
        if not isinstance(modulation.controlnet_cond_embedding, NoRawXtEncoder):
            conv = modulation.controlnet_cond_embedding.conv_out
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.1)


def _residuals(modulation, x0, x_t, text):
    down, mid = modulation.residuals(x0, x_t, torch.tensor([10, 10]), text)
    return torch.cat([r.flatten() for r in down] + [mid.flatten()])


def test_no_raw_xt_removes_the_x_t_path_and_round_trips(tmp_path):
    unet = tiny_sd_components()["unet"]
    full = TuneMV3DModulationModel.from_unet(unet, xt_encoder_channels=(8,))
    ablated = TuneMV3DModulationModel.from_unet(unet, xt_encoder_channels=(8,), use_raw_xt=False)
    assert full.config.use_raw_xt is True and ablated.config.use_raw_xt is False
    assert isinstance(ablated.controlnet_cond_embedding, NoRawXtEncoder)
    assert not any(k.startswith("controlnet_cond_embedding") for k in ablated.state_dict())
    _randomize(full)
    _randomize(ablated)
    x0, text = torch.randn(2, 4, 8, 8), torch.randn(2, 5, 16)
    xa, xb = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        assert not torch.allclose(_residuals(full, x0, xa, text), _residuals(full, x0, xb, text))
        assert torch.equal(_residuals(ablated, x0, xa, text), _residuals(ablated, x0, xb, text))  # x_t does not reach O
        ablated.save_pretrained(tmp_path / "m")
        loaded = TuneMV3DModulationModel.from_pretrained(tmp_path / "m")
        assert loaded.config.use_raw_xt is False and isinstance(loaded.controlnet_cond_embedding, NoRawXtEncoder)
        assert torch.equal(_residuals(loaded, x0, xa, text), _residuals(ablated, x0, xa, text))
        # models saved before the switch existed load with the raw x_t path
        config = json.loads((tmp_path / "m" / "config.json").read_text())
        assert config["use_raw_xt"] is False
        full.save_pretrained(tmp_path / "old")
        old = json.loads((tmp_path / "old" / "config.json").read_text())
        del old["use_raw_xt"]
        (tmp_path / "old" / "config.json").write_text(json.dumps(old))
        assert TuneMV3DModulationModel.from_pretrained(tmp_path / "old").config.use_raw_xt is True


def test_rendered_features_feed_encoder_o_and_round_trip(tmp_path):
    sd = save_tiny_sd(tmp_path / "sd")
    kwargs = {**TINY_INTERACTIVE, "render_target": "features", "render_channels": 6}
    pipe = TuneMV3DPipeline.from_pretrained(sd, interactive_kwargs=kwargs)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.interactive.num_render_channels == 6 and pipe.interactive.background.shape == (6,)
    assert pipe.modulation.config.in_channels == 6 and pipe.modulation.conv_in.in_channels == 6
    assert torch.equal(pipe.modulation.down_blocks[0].resnets[0].conv1.weight, pipe.unet.down_blocks[0].resnets[0].conv1.weight)
    _randomize(pipe.modulation)
    out = pipe("a red box", num_views=3, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np")
    assert out.field.render(out.cameras[0])["x0"].shape == (1, 3, 6, 8, 8)
    with pytest.raises(ValueError, match="renders features"):
        pipe.render_orbit(out.field, num_frames=1)
    pipe.save_pretrained(tmp_path / "saved")
    again = TuneMV3DPipeline.from_pretrained(tmp_path / "saved")
    again.set_progress_bar_config(disable=True)
    out2 = again("a red box", num_views=3, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np")
    assert again.interactive.config.render_target == "features" and (out.images == out2.images).all()
    with pytest.raises(ValueError, match="render_target"):
        TuneMV3DInteractiveModel(render_target="rgb")
    with pytest.raises(ValueError, match="needs 'features'"):
        TuneMV3DInteractiveModel(latent_channels=4, render_channels=6)


def test_training_script_ablation_flags(tmp_path):
    train = load_script("training/train_tunemv3d.py")
    sd, data = save_tiny_sd(tmp_path / "sd"), make_toy_dataset(tmp_path / "data", num_objects=2, num_views=4, resolution=16)
    out = tmp_path / "run"
    result = train.main(train.parse_args([
        "--pretrained_model_name_or_path", str(sd), "--train_data_dir", str(data), "--output_dir", str(out), "--num_views", "2",
        "--num_novel_views", "1", "--resolution", "16", "--train_batch_size", "2", "--max_train_steps", "2", "--seed", "0",
        "--checkpointing_steps", "0", "--interactive_kwargs", json.dumps(TINY_INTERACTIVE),
        "--no_raw_xt", "--render_target", "features", "--render_channels", "6",
    ]))
    assert result["global_step"] == 2
    summary = json.loads((out / "tunemv3d_training.json").read_text())
    assert summary["global_step"] == 2 and summary["use_raw_xt"] is False and summary["render_target"] == "features"
    pipe = TuneMV3DPipeline.from_pretrained(out)
    assert pipe.modulation.config.use_raw_xt is False and pipe.interactive.num_render_channels == 6
    assert pipe.modulation.config.in_channels == 6
    # no x0 to supervise the rendered features: the render term is 0, the denoising term trains everything
    from diffusers import DDPMScheduler

    from my3dgen_hf.tunemv3d.data import MultiViewDataset, collate

    batch = collate([MultiViewDataset(data, 2, 1, 16, random_views=False)[i] for i in range(2)])
    args = train.parse_args(["--pretrained_model_name_or_path", "x", "--train_data_dir", "x", "--num_views", "2"])
    loss, logs = train.compute_loss(dict(pipe.components), batch, DDPMScheduler.from_config(pipe.scheduler.config), args, torch.Generator().manual_seed(0))
    assert logs["loss_render"] == 0.0 and logs["loss"] == pytest.approx(logs["loss_denoise"])
    loss.backward()
    assert pipe.interactive.field.x0_out[-1].weight.grad.abs().sum() > 0  # the features get gradients through O
