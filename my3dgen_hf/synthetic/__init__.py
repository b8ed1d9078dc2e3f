"""Synthetic data: SynthHeads, a procedural 3D head world with exact EG3D cameras and ground truth."""

from .synthheads import (
    BEARD_STYLES,
    HAIR_STYLES,
    SYNTHHEADS_VERSION,
    IdentityParams,
    ImageParams,
    camera_label_from_pose,
    camera_rays,
    export_dataset,
    head_landmarks,
    project_points,
    render,
    render_image,
    sample_identity,
    sample_image_params,
)

__all__ = [
    "BEARD_STYLES",
    "HAIR_STYLES",
    "SYNTHHEADS_VERSION",
    "IdentityParams",
    "ImageParams",
    "camera_label_from_pose",
    "camera_rays",
    "export_dataset",
    "head_landmarks",
    "project_points",
    "render",
    "render_image",
    "sample_identity",
    "sample_image_params",
]
