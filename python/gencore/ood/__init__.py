"""Out-of-distribution detection: exact kNN and logit / feature scores.

Every score: higher = more in-distribution.

Public names:
    knn(queries, bank, k, metric="l2") -> (values, indices)
    msp(logits, temperature=1.0) -> [N]
    energy(logits, temperature=1.0) -> [N]
    max_logit(logits) -> [N]
    gen(logits, gamma=0.1, top_m=100) -> [N]
    kl_matching(logits, templates) -> [N];  kl_matching_templates(logits) -> [C, C]
    residual(features, principal, center) -> [N]
    vim(features, logits, principal, center, alpha) -> [N]
    vim_fit(features, logits, weight, bias, dim) -> (center, principal, alpha)
"""
from .ops import knn
from .ops import energy, gen, kl_matching, max_logit, msp, residual, vim
from .logits_fit import kl_matching_templates, vim_fit

__all__ = ["knn"]
__all__ += ["msp", "energy", "max_logit", "gen", "kl_matching", "kl_matching_templates", "residual", "vim",
            "vim_fit"]
