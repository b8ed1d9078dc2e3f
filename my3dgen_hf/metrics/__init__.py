"""Evaluation metrics of My3DGen: identity similarity, perceptual and pixel distances, diversity, importance.

Nothing here imports torchvision. See docs/metrics.md for each metric and the weights policy (what ships inside
installed packages, what the user supplies, and the documented substitute).
"""

from .diversity import DiversityResult, assign_to_nearest, intra_cluster_diversity
from .identity import (
    ARCFACE_WEIGHTS_ENV,
    DLIB_SAME_PERSON_THRESHOLD,
    ArcFaceIRSE50,
    DlibFaceDescriptor,
    IdentityBackbone,
    IDSimilarity,
    TorchIdentityBackbone,
    embed_in_batches,
    id_reconstruction_similarity,
    id_similarity,
    id_similarity_from_embeddings,
)
from .image import ms_ssim, psnr, ssim
from .importance import (
    detect_blocks,
    lora_importance,
    lora_merged_state_dicts,
    normalize_state_dict_keys,
    per_tensor_change_ratios,
    plot_importance,
    weight_change_ratios,
)
from .perceptual import (
    DISTS,
    LPIPS,
    LPIPS_BACKBONE_ENV,
    TORCHVISION_FILENAMES,
    AlexNetFeatures,
    BackboneWeightsNotFound,
    MSSSIMDistance,
    PerceptualLoss,
    VGG16Features,
    dists_weights_path,
    find_backbone_weights,
    load_torchvision_features,
    lpips_heads_path,
    perceptual_availability,
    perceptual_loss,
)

__all__ = [
    # identity
    "IdentityBackbone",
    "IDSimilarity",
    "id_similarity",
    "id_similarity_from_embeddings",
    "id_reconstruction_similarity",
    "embed_in_batches",
    "ArcFaceIRSE50",
    "ARCFACE_WEIGHTS_ENV",
    "DlibFaceDescriptor",
    "DLIB_SAME_PERSON_THRESHOLD",
    "TorchIdentityBackbone",
    # perceptual
    "LPIPS",
    "DISTS",
    "MSSSIMDistance",
    "PerceptualLoss",
    "perceptual_loss",
    "perceptual_availability",
    "AlexNetFeatures",
    "VGG16Features",
    "BackboneWeightsNotFound",
    "find_backbone_weights",
    "load_torchvision_features",
    "lpips_heads_path",
    "dists_weights_path",
    "LPIPS_BACKBONE_ENV",
    "TORCHVISION_FILENAMES",
    # image
    "psnr",
    "ssim",
    "ms_ssim",
    # diversity
    "intra_cluster_diversity",
    "assign_to_nearest",
    "DiversityResult",
    # importance
    "weight_change_ratios",
    "per_tensor_change_ratios",
    "detect_blocks",
    "normalize_state_dict_keys",
    "lora_merged_state_dicts",
    "lora_importance",
    "plot_importance",
]
