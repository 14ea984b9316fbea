"""Per-step coefficients of the solvers, computed once per grid in float64.

Every solver works on the EDM form x = y + s n (s: noise level) with the
denoiser D(x, s), and every one of its linear steps is

    x_next = c_x X + c_d D + c_1 H1 + c_2 H2 + c_3 H3 + c_z Z

for tensors (X, D, H1..H3, Z) that the solver names per step (the current x,
the current and earlier denoised, a stage, fresh noise). This module turns a
grid s [..., n + 1] (per-sample grids have a leading batch dimension) into the
[n, ..., 6] table of (c_x, c_d, c_1, c_2, c_3, c_z), so the sampling loop does
no coefficient math at all, and nothing on the host waits for the device.

Notation: lambda = -log s, h_i = lambda_{i+1} - lambda_i (> 0 when sampling,
< 0 on the increasing grids of an inversion; h = 0 marks "no such step": before
the first and on a step to 0), and a step to s = 0 is the pure denoising step
x_next = D (the shared final-step policy).
"""
from __future__ import annotations


import torch

__all__ = ["euler", "heun", "dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde", "unipc", "N_COEFFS"]

N_COEFFS = 6
X, D, H1, H2, H3, Z = range(N_COEFFS)


def _table(s: torch.Tensor) -> torch.Tensor:
    return torch.zeros((s.shape[-1] - 1,) + s.shape[:-1] + (N_COEFFS,), dtype=torch.float64, device=s.device)


def _steps(s: torch.Tensor):
    """(s_i, s_{i+1}, final mask, h_i) as [n, ...] (h is 0 on the final step to 0)."""
    s = s.to(torch.float64)
    cur, nxt = s[..., :-1].movedim(-1, 0), s[..., 1:].movedim(-1, 0)
    final = nxt == 0
    safe_next = torch.where(final, cur, nxt)
    h = torch.where(final, torch.zeros_like(cur), torch.log(cur) - torch.log(safe_next))
    return cur, nxt, final, h


def _denoise_where_final(table: torch.Tensor, final: torch.Tensor) -> torch.Tensor:
    """On steps to s = 0: x_next = D."""
    denoise = torch.zeros(N_COEFFS, dtype=torch.float64, device=table.device)
    denoise[D] = 1
    return torch.where(final[..., None], denoise, table)


def euler(s: torch.Tensor) -> torch.Tensor:
    """x_next = x + (s' - s)(x - D) / s = (s'/s) x + (1 - s'/s) D  (EDM's Euler / DDIM)."""
    cur, nxt, final, _ = _steps(s)
    t = _table(s)
    t[..., X] = nxt / cur
    t[..., D] = 1 - nxt / cur
    return _denoise_where_final(t, final)


def heun(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Karras et al. 2022, Algorithm 1 (no churn): (predictor, corrector) tables.

    predictor: x2 = euler step (X = x, D = D(x, s));
    corrector: x_next = x + (s' - s) (d + d2) / 2 with d = (x - D1) / s, d2 = (x2 - D2) / s':
        X = x, D = D(x2, s'), H1 = D(x, s), H2 = x2.
    The step to 0 is Euler (the corrector's table there is the denoising step of the predictor).
    """
    cur, nxt, final, _ = _steps(s)
    predictor = euler(s)
    corr = _table(s)
    dt = nxt - cur
    safe_next = torch.where(final, cur, nxt)
    corr[..., X] = 1 + dt / (2 * cur)
    corr[..., H1] = -dt / (2 * cur)
    corr[..., H2] = dt / (2 * safe_next)
    corr[..., D] = -dt / (2 * safe_next)
    return predictor, _denoise_where_final(corr, final)


def dpmpp_2m(s: torch.Tensor) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) in data prediction:

        x_next = (s'/s) x - expm1(-h) ((1 + 1/(2r)) D - (1/(2r)) D_prev),  r = h_prev / h

    with X = x, D = D(x, s), H1 = D of the previous step; the first step (no
    history) is first order (DDIM), and so is the step to 0.
    """
    cur, nxt, final, h = _steps(s)
    t = _table(s)
    ratio = torch.where(final, torch.ones_like(cur), nxt / torch.where(final, torch.ones_like(cur), cur))
    phi = -torch.expm1(-h)                                   # 1 - s'/s
    t[..., X] = ratio
    h_prev = torch.cat([torch.zeros_like(h[:1]), h[:-1]])
    second = h_prev != 0
    r = torch.where(second, h_prev / torch.where(h != 0, h, torch.ones_like(h)), torch.ones_like(h))
    t[..., D] = phi * torch.where(second, 1 + 1 / (2 * r), torch.ones_like(r))
    t[..., H1] = torch.where(second, -phi / (2 * r), torch.zeros_like(r))
    return _denoise_where_final(t, final)


def dpmpp_3m(s: torch.Tensor) -> torch.Tensor:
    """DPM-Solver++(3M) (the multistep third-order data-prediction solver; k-diffusion's
    sample_dpmpp_3m_sde with eta = 0), X = x, D, H1 = D_prev, H2 = D_prev2:

        x_next = e^-h x + (1 - e^-h) D + phi_2 d1 - phi_3 d2,
        d1_0 = (D - D1) / r0, d1_1 = (D1 - D2) / r1, d1 = d1_0 + (d1_0 - d1_1) r0 / (r0 + r1),
        d2 = (d1_0 - d1_1) / (r0 + r1), phi_2 = (1 - e^-h) / h ... (as expm1), phi_3 = phi_2 / h - 1/2,
    r0 = h_prev / h, r1 = h_prev2 / h; orders 1 and 2 until the history exists.
    """
    cur, nxt, final, h = _steps(s)
    t = _table(s)
    one = torch.ones_like(h)
    safe_h = torch.where(h != 0, h, one)
    t[..., X] = torch.exp(-h)
    t[..., D] = -torch.expm1(-h)
    h1 = torch.cat([torch.zeros_like(h[:1]), h[:-1]])
    h2 = torch.cat([torch.zeros_like(h[:2]), h[:-2]])
    phi_2 = torch.expm1(-safe_h) / safe_h + 1               # = 1 + (e^-h - 1)/h
    phi_3 = phi_2 / safe_h - 0.5
    has1, has2 = h1 != 0, (h1 != 0) & (h2 != 0)
    r0 = torch.where(has1, h1 / safe_h, one)
    r1 = torch.where(has2, h2 / safe_h, one)
    # order 3: x += phi_2 d1 - phi_3 d2, expanded into D, D1, D2
    #   d1_0 = (D - D1)/r0,  d1_1 = (D1 - D2)/r1
    a0, a1 = 1 / r0, 1 / r1
    w = r0 / (r0 + r1)
    # d1 = (1 + w) d1_0 - w d1_1 ; d2 = (d1_0 - d1_1) / (r0 + r1)
    c_d1_0 = phi_2 * (1 + w) - phi_3 / (r0 + r1)
    c_d1_1 = -phi_2 * w + phi_3 / (r0 + r1)
    third_d = c_d1_0 * a0
    third_h1 = -c_d1_0 * a0 + c_d1_1 * a1
    third_h2 = -c_d1_1 * a1
    # order 2: x += phi_2 (D - D1) / r0
    second_d, second_h1 = phi_2 / r0, -phi_2 / r0
    zero = torch.zeros_like(h)
    t[..., D] += torch.where(has2, third_d, torch.where(has1, second_d, zero))
    t[..., H1] = torch.where(has2, third_h1, torch.where(has1, second_h1, zero))
    t[..., H2] = torch.where(has2, third_h2, zero)
    return _denoise_where_final(t, final)


def dpmpp_2m_sde(s: torch.Tensor, eta: float = 1.0, s_noise: float = 1.0, solver_type: str = "midpoint") -> torch.Tensor:
    """DPM-Solver++(2M) SDE (Lu et al. 2022, the stochastic multistep variant), X = x, D,
    H1 = D_prev, Z = standard normal noise:

        x_next = (s'/s) e^{-eta h} x + (1 - e^{-(1+eta) h}) D + c (D - D_prev) + s' sqrt(1 - e^{-2 eta h}) s_noise Z
        c = (1 - e^{-(1+eta)h}) / (2r) (midpoint) or ((1 - e^{-(1+eta)h}) / ((1+eta) h) ... ) / r (heun)
    """
    cur, nxt, final, h = _steps(s)
    t = _table(s)
    one = torch.ones_like(h)
    ratio = torch.where(final, one, nxt / torch.where(final, one, cur))
    eh = eta * h
    total = h + eh
    phi = -torch.expm1(-total)
    t[..., X] = ratio * torch.exp(-eh)
    t[..., D] = phi
    h_prev = torch.cat([torch.zeros_like(h[:1]), h[:-1]])
    second = h_prev != 0
    r = torch.where(second, h_prev / torch.where(h != 0, h, one), one)
    if solver_type == "midpoint":
        c = 0.5 * phi / r
    elif solver_type == "heun":
        safe_total = torch.where(total != 0, total, one)
        c = (1 - phi / safe_total) / r           # ((1 - e^-T) / (-T) + 1) / r, T = (1 + eta) h
    else:
        raise ValueError(f"solver_type must be 'midpoint' or 'heun', got {solver_type!r}")
    t[..., D] += torch.where(second, c, torch.zeros_like(c))
    t[..., H1] = torch.where(second, -c, torch.zeros_like(c))
    t[..., Z] = nxt * torch.sqrt(-torch.expm1(-2 * eh)) * s_noise
    return _denoise_where_final(t, final)


def unipc(s: torch.Tensor, order: int = 3, variant: str = "bh2", corrector: bool = True,
          lower_order_final: bool = True) -> torch.Tensor:
    """UniPC (Zhao et al. 2023) in data prediction: predictor UniP-p and corrector UniC
    folded into one step. X = the current (predicted) x_i, D = D(x_i, s_i), H1..H3 =
    the denoised of the three steps before.

    Step i corrects x_i with the new model output D_i (UniC: x_i^c = x_i' - B(h)
    (sum_k rho^c_k D1_k + rho^c_last (D_i - D_{i-1})), x_i' the DDIM step from
    x_{i-1}^c), then predicts x_{i+1} from x_i^c (UniP). x_{i-1}^c is not kept:
    it is the previous predictor solved for its input, (x_i - sum p_j D_j) / p_0
    (p_0 = s_i / s_{i-1} > 0), so corrector and predictor together are linear in
    (x_i, D_i, D_{i-1}, D_{i-2}, D_{i-3}), one fused call, and the loop carries
    one state like every other multistep solver. B(h) = -h (bh1) or expm1(-h)
    (bh2). Step 0 only predicts; the order drops near the end when
    lower_order_final (as diffusers does).
    """
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order}")
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"variant must be 'bh1' or 'bh2', got {variant!r}")
    cur, nxt, final, h = _steps(s)
    n = h.shape[0]
    lam = -torch.log(s.to(torch.float64).movedim(-1, 0)[:-1])     # [n, ...] lambda_i (s_i > 0)
    safe_h = torch.where(h != 0, h, torch.ones_like(h))

    def b_of(hh):
        return hh if variant == "bh1" else torch.expm1(hh)

    def unip(i, p):
        """x_{i+1} over (x_i^c, D_i, D_{i-1}, D_{i-2}): UniP-p from s_i."""
        hh = -safe_h[i]
        phi1, b_h = torch.expm1(hh), b_of(hh)
        c = [nxt[i] / cur[i], -phi1, torch.zeros_like(hh), torch.zeros_like(hh)]
        if p >= 2:
            rks = [(lam[i - k] - lam[i]) / safe_h[i] for k in range(1, p)]
            for k, (rk, rho) in enumerate(zip(rks, _rhos(rks, hh, b_h, p, predictor=True)), start=1):
                c[1] = c[1] + b_h * rho / rk          # - B(h) rho (D_{i-k} - D_i) / r_k
                c[1 + k] = c[1 + k] - b_h * rho / rk
        return c

    def unic(i, p):
        """x_i^c over (x_{i-1}^c, D_i, D_{i-1}, D_{i-2}, D_{i-3}): UniC-p of the step from s_{i-1}."""
        j = i - 1
        hh = -safe_h[j]
        phi1, b_h = torch.expm1(hh), b_of(hh)
        c = [nxt[j] / cur[j], torch.zeros_like(hh), -phi1, torch.zeros_like(hh), torch.zeros_like(hh)]
        rks = [(lam[j - k] - lam[j]) / safe_h[j] for k in range(1, p)]
        rhos = _rhos(rks + [torch.ones_like(hh)], hh, b_h, p, predictor=False)
        for k, (rk, rho) in enumerate(zip(rks, rhos[:-1]), start=1):
            c[2] = c[2] + b_h * rho / rk
            c[2 + k] = c[2 + k] - b_h * rho / rk
        c[1] = c[1] - b_h * rhos[-1]                  # - B(h) rho_last (D_i - D_{i-1})
        c[2] = c[2] + b_h * rhos[-1]
        return c

    def order_at(i):
        return min(order, i + 1, (n - i) if lower_order_final else order)

    t = _table(s)
    previous = None
    for i in range(n):
        pred = unip(i, order_at(i))
        if i == 0 or not corrector:
            row = [pred[0], pred[1], pred[2], pred[3], torch.zeros_like(pred[0])]
        else:
            corr = unic(i, order_at(i - 1))
            p = previous  # x_i = p0 x_{i-1}^c + p1 D_{i-1} + p2 D_{i-2} + p3 D_{i-3}
            xc = [corr[0] / p[0], corr[1], corr[2] - corr[0] * p[1] / p[0], corr[3] - corr[0] * p[2] / p[0],
                  corr[4] - corr[0] * p[3] / p[0]]    # x_i^c over (x_i, D_i, D_{i-1}, D_{i-2}, D_{i-3})
            row = [pred[0] * xc[0], pred[0] * xc[1] + pred[1], pred[0] * xc[2] + pred[2],
                   pred[0] * xc[3] + pred[3], pred[0] * xc[4]]
        for slot, value in zip((X, D, H1, H2, H3), row):
            t[i, ..., slot] = value
        previous = pred
    return _denoise_where_final(t, final)


def _rhos(rks, hh, b_h, p, predictor: bool):
    """UniPC's rho: solve R rho = b with R_ki = r_i^(k-1), b_k = h phi_{k+1}(h) k! / B(h)
    (rows k = 1..p); the predictor drops the last row and column; order 2 predictor
    (and order 1 corrector) use rho = 1/2, as the paper's implementation does."""
    if predictor and p == 2:
        return [0.5 * torch.ones_like(hh)]
    if not predictor and p == 1:
        return [0.5 * torch.ones_like(hh)]
    phi_k = torch.expm1(hh) / hh - 1
    factorial = 1
    b = []
    for k in range(1, p + 1):
        b.append(phi_k * factorial / b_h)
        factorial *= k + 1
        phi_k = phi_k / hh - 1 / factorial
    size = p - 1 if predictor else p
    r = torch.stack([torch.stack([rks[i] ** k for i in range(size)], -1) for k in range(size)], -2)  # [..., k, i]
    rhs = torch.stack(b[:size], -1)
    return list(torch.linalg.solve(r, rhs).movedim(-1, 0))
