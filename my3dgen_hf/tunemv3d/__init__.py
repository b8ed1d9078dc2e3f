"""TuneMV3D: multi-view 3D generation by tuning a frozen 2D diffusion model.

* ``interactive.py``: encoder E + latent NeuS field (``TuneMV3DInteractiveModel``, ``TuneMV3DField``);
* ``neus.py``: the field's MLP (positional encoding, ResNetFC) and the NeuS volume renderer;
* ``modulation.py``: encoder O + raw-x_t encoder + zero convolutions (``TuneMV3DModulationModel``);
* ``denoiser.py``: one denoising step through the three networks (``predict_noise``);
* ``cameras.py``: 25-value camera labels, rings, rays, projection;
* ``data.py``: the multi-view training dataset; ``toy_data.py``: a tiny analytic dataset in that layout;
* ``lora.py``: the pipeline's LoRA loader mixin.

The pipeline is ``my3dgen_hf.pipelines.tunemv3d.TuneMV3DPipeline``.
"""

from .cameras import camera_labels, orbit_cameras, pixel_rays, project_points, ring_cameras, split_labels
from .denoiser import predict_noise
from .interactive import TuneMV3DField, TuneMV3DInteractiveModel, TuneMV3DInteractiveOutput
from .modulation import TuneMV3DModulationModel
from .neus import NeuSField, NeuSRenderer

__all__ = [
    "NeuSField",
    "NeuSRenderer",
    "TuneMV3DField",
    "TuneMV3DInteractiveModel",
    "TuneMV3DInteractiveOutput",
    "TuneMV3DModulationModel",
    "camera_labels",
    "orbit_cameras",
    "pixel_rays",
    "predict_noise",
    "project_points",
    "ring_cameras",
    "split_labels",
]
