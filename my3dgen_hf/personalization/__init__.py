"""Personalization end to end: photos in, identity adapter out.

    from my3dgen_hf.personalization import preprocess_photos, project_to_w, personalize

    data = preprocess_photos(["me1.jpg", "me2.jpg"], out_dir="crops", resolution=pipe.generator.img_resolution)
    anchors = project_to_w(pipe, data.images, data.labels, cache_dir="~/.cache/my3dgen-hf/projections")
    result = personalize(pipe, data.images, data.labels, anchors, adapter_name="me", output_dir="me-adapter")
    pipe(ws=anchors[:1], yaw=0.3).images[0]          # the adapter is active on ``pipe``

EG3D-format datasets (images + ``dataset.json``) load with :func:`load_eg3d_dataset`. ``training/personalize.py``
is the command-line (Accelerate) front end. See docs/personalization.md.

What a personalized prior is for (docs/downstream.md): :func:`pti_invert` (PTI inversion), :func:`sample_in_hull`
and :func:`render_interpolation` (synthesis in the anchors' convex hull), :func:`project_to_hull`, :func:`inpaint`
and :func:`super_resolve` (MyStyle alpha-space projection), :func:`fit_direction` / :func:`edit_in_hull` (editing).
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
from .editing import (
    EDGE_POLICIES,
    EditDirection,
    EditResult,
    direction_from_classifier,
    direction_in_anchor_span,
    edit_in_hull,
    fit_direction,
    load_directions,
    save_directions,
)
from .hull import (
    DEFAULT_BETA,
    HullProjection,
    HullProjectorSettings,
    HullSamples,
    hull_ws,
    inpaint,
    interpolate_anchors,
    project_to_hull,
    project_w_to_hull,
    render_interpolation,
    sample_in_hull,
    super_resolve,
)
from .preprocess import PreprocessResult, estimate_pose, ffhq_align, preprocess_photos
from .projector import (
    DEFAULT_PROJECTION_STEPS,
    ProjectorSettings,
    project_to_w,
    w_statistics,
)
from .pti import (
    DEFAULT_PTI_EARLY_STOP,
    DEFAULT_PTI_LR,
    DEFAULT_PTI_STEPS,
    DEFAULT_PTI_W_STEPS,
    PTIResult,
    adapted_generator_copy,
    adapted_pipeline,
    project_to_adapted_w,
    pti_invert,
)
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
    "adapted_generator_copy",
    "adapted_pipeline",
    "check_output_dir",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_BETA",
    "DEFAULT_LR",
    "DEFAULT_PROJECTION_STEPS",
    "DEFAULT_PTI_EARLY_STOP",
    "DEFAULT_PTI_LR",
    "DEFAULT_PTI_STEPS",
    "DEFAULT_PTI_W_STEPS",
    "DEFAULT_STEPS",
    "direction_from_classifier",
    "direction_in_anchor_span",
    "EDGE_POLICIES",
    "edit_in_hull",
    "EditDirection",
    "EditResult",
    "estimate_pose",
    "ffhq_align",
    "fit_direction",
    "global_batch",
    "hull_ws",
    "HullProjection",
    "HullProjectorSettings",
    "HullSamples",
    "inpaint",
    "interpolate_anchors",
    "is_eg3d_dataset",
    "load_anchors",
    "load_directions",
    "load_eg3d_dataset",
    "load_training_data",
    "make_accelerator",
    "PersonalizationCancelled",
    "PersonalizationError",
    "PersonalizationResult",
    "personalize",
    "preprocess_photos",
    "PreprocessResult",
    "project_to_hull",
    "project_to_adapted_w",
    "project_to_w",
    "project_w_to_hull",
    "ProjectorSettings",
    "pti_invert",
    "PTIResult",
    "read_dataset_json",
    "render_interpolation",
    "render_validation_grid",
    "sample_in_hull",
    "save_directions",
    "save_anchors",
    "super_resolve",
    "w_statistics",
]
