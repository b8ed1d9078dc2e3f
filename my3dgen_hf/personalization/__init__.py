"""Personalization end to end: photos in, identity adapter out.

    from my3dgen_hf.personalization import preprocess_photos, project_to_w, personalize

    data = preprocess_photos(["me1.jpg", "me2.jpg"], out_dir="crops", resolution=pipe.generator.img_resolution)
    anchors = project_to_w(pipe, data.images, data.labels, cache_dir="~/.cache/my3dgen-hf/projections")
    result = personalize(pipe, data.images, data.labels, anchors, adapter_name="me", output_dir="me-adapter")
    pipe(ws=anchors[:1], yaw=0.3).images[0]          # the adapter is active on ``pipe``

EG3D-format datasets (images + ``dataset.json``) load with :func:`load_eg3d_dataset`. ``training/personalize.py``
is the command-line (Accelerate) front end. See docs/personalization.md.
"""

from .data import (
    PersonalizationCancelled,
    PersonalizationError,
    check_output_dir,
    is_eg3d_dataset,
    load_eg3d_dataset,
    load_training_data,
    read_dataset_json,
)
from .preprocess import PreprocessResult, estimate_pose, ffhq_align, preprocess_photos
from .projector import DEFAULT_PROJECTION_STEPS, ProjectorSettings, project_to_w, w_statistics
from .trainer import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_LR,
    DEFAULT_STEPS,
    PersonalizationResult,
    global_batch,
    load_anchors,
    make_accelerator,
    personalize,
    render_validation_grid,
    save_anchors,
)

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_LR",
    "DEFAULT_PROJECTION_STEPS",
    "DEFAULT_STEPS",
    "PersonalizationCancelled",
    "PersonalizationError",
    "PersonalizationResult",
    "PreprocessResult",
    "ProjectorSettings",
    "check_output_dir",
    "estimate_pose",
    "ffhq_align",
    "global_batch",
    "is_eg3d_dataset",
    "load_anchors",
    "load_eg3d_dataset",
    "load_training_data",
    "make_accelerator",
    "personalize",
    "preprocess_photos",
    "project_to_w",
    "read_dataset_json",
    "render_validation_grid",
    "save_anchors",
    "w_statistics",
]
