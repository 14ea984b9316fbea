"""score torch ops, one module per op group (each registers its ops on import):
_dataset (the data-set denoiser), _gmm (Gaussian mixtures), _losses (the fused
DSM loss and its backward, the DMD gradient)."""
from ._dataset import dataset_denoiser, dataset_log_density, dataset_score
from ._gmm import gmm_denoiser, gmm_log_prob, gmm_score
from ._losses import DMD_GRADIENT, DSM_LOSS

__all__ = ["dataset_denoiser", "dataset_score", "dataset_log_density", "gmm_denoiser", "gmm_score", "gmm_log_prob",
           "DSM_LOSS", "DMD_GRADIENT"]
