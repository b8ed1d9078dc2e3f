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
    "SYNTHHEADS_VERSION",
    "HAIR_STYLES",
    "BEARD_STYLES",
    "IdentityParams",
    "ImageParams",
    "sample_identity",
    "sample_image_params",
    "camera_label_from_pose",
    "camera_rays",
    "project_points",
    "head_landmarks",
    "render",
    "render_image",
    "export_dataset",
]
