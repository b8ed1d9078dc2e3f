"""Tiny EG3D configurations shared by the tests (seconds on a 2-core CPU)."""

from my3dgen_hf import EG3DGenerator, EG3DPipeline

TINY_RENDERING = {"superresolution_module": "SuperresolutionHybrid2X", "depth_resolution": 8, "depth_resolution_importance": 8}


def tiny_generator(seed: int = 0, **overrides) -> EG3DGenerator:
    import torch

    torch.manual_seed(seed)
    kwargs = dict(
        z_dim=16, w_dim=16, img_resolution=128, channel_base=256, channel_max=16, num_fp16_res=0,
        mapping_kwargs={"num_layers": 2}, neural_rendering_resolution=32, rendering_kwargs=dict(TINY_RENDERING),
    )
    kwargs.update(overrides)
    return EG3DGenerator(**kwargs).eval()


def tiny_pipeline(seed: int = 0, **overrides) -> EG3DPipeline:
    return EG3DPipeline(generator=tiny_generator(seed, **overrides))
