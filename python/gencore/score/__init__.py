"""Score estimation: exact denoisers and scores of a finite data set and of a
Gaussian mixture, denoising score matching losses (EDM / VP / VE), sliced score
matching, the DMD distribution-matching gradient, memorisation diagnostics.

Conventions: x = alpha y + sigma n (alpha = 1: VE / EDM; alpha = alpha_t: VP);
sigma and alpha are floats or [B] tensors, one per query.

Public names:
    dataset_denoiser(x, data, sigma, weights=None, k=None, *, alpha=None) -> [B, d]
    dataset_score(...) -> [B, d];  dataset_log_density(...) -> [B]
    gmm_denoiser(x, means, weights, variances, sigma, *, alpha=None) -> [B, d]
    gmm_score(...) -> [B, d];  gmm_log_prob(...) -> [B]
        variances: [K] isotropic, [K, d] diagonal, [K, d, d] full
    losses: edm_loss, vp_loss, ve_loss, EDMPrecond, VPPrecond, VEPrecond, dsm_loss, dsm_target,
        edm_precond, vp_precond, ve_precond, sliced_score_matching_loss, dmd_gradient, dmd_loss
    diagnostics: nearest_training(samples, data), memorized(samples, data, threshold=1/3)
    distributed (import gencore.score.distributed): dataset_denoiser, dataset_log_density
"""
from .ops import (dataset_denoiser, dataset_log_density, dataset_score, gmm_denoiser, gmm_log_prob,
                  gmm_score)
from .losses import (EDMPrecond, VEPrecond, VPPrecond, dmd_gradient, dmd_loss, dsm_loss, dsm_target, edm_loss,
                     edm_precond, sliced_score_matching_loss, ve_loss, ve_precond, vp_loss, vp_precond)
from .diagnostics import memorized, nearest_training

__all__ = ["dataset_denoiser", "dataset_score", "dataset_log_density", "gmm_denoiser", "gmm_score", "gmm_log_prob",
           "edm_loss", "vp_loss", "ve_loss", "EDMPrecond", "VPPrecond", "VEPrecond", "dsm_loss", "dsm_target",
           "edm_precond", "vp_precond", "ve_precond", "sliced_score_matching_loss", "dmd_gradient", "dmd_loss",
           "nearest_training", "memorized", "distributed"]


def __getattr__(name):  # distributed is imported on first use: it pulls in torch.distributed
    if name == "distributed":
        import importlib
        return importlib.import_module(f"{__name__}.distributed")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
