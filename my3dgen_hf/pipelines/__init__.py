from .eg3d import EG3DPipeline, EG3DPipelineOutput

__all__ = ["EG3DPipeline", "EG3DPipelineOutput"]
