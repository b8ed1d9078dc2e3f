"""my3dgen-hf: personalized 3D generative models (EG3D + convolutional LoRA, TuneMV3D) as diffusers components."""

__version__ = "0.1.0"

from .eg3d.generator import EG3DGenerator
from .pipelines.eg3d import EG3DPipeline, EG3DPipelineOutput

__all__ = ["EG3DGenerator", "EG3DPipeline", "EG3DPipelineOutput", "__version__"]
