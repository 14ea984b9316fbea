"""A fake ``gencore._cuda`` over HOST memory, so the CPU-only suite can run the
CUDA Python glue of every op with CPU tensors.

``FakeCuda`` has exactly the API of the real module (``cuda/module.cu``,
``cuda/bindings/*.cu``) and its contract as
documented in ``cuda/ood/*.cuh``, ``cuda/score/*.cuh`` and ``cuda/ode/*.cuh``:
the same outputs (keys formed in float32 the way the kernels form them, sums
in float64), the same tie rules (lower index first; NaN keys rank last in kNN
and win the Mahalanobis min), the same ValueError messages for bad sizes, and
``*_workspace_bytes`` by the formulas in the headers. Pointers are Python ints
(``tensor.data_ptr()`` of CPU tensors here), viewed through ctypes as
C-contiguous arrays of the documented shapes: the fake reads and writes
exactly the documented elements and nothing else, so a wrong pointer, offset
or shape on the Python side shows as wrong values, as it would on a GPU.

What it checks beyond the kernels' own argument checks (which it mirrors):
every pointer is non-null and aligned to its element size, the device index
is one it has, and the workspace is non-null, 16-byte aligned and at least
``*_workspace_bytes`` bytes. It then fills that many workspace bytes with
0xff before computing, as the kernels overwrite their workspace, so a
workspace that aliases an input or output shows too.

Usage::

    fake = FakeCuda()
    monkeypatch.setattr(_native, "cuda", fake)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: FakeStream())
    ... run the op's CUDA path on CPU tensors ...
    assert fake.calls["knn"] == 1
"""
from __future__ import annotations

import collections
import ctypes
import math

import numpy as np

__all__ = ["FakeCuda", "FakeStream"]

F32 = np.float32
F64 = np.float64

KNN_MAX_K = 4096                     # cuda/ood/knn.cuh kKnnMaxK
WORKSPACE_ALIGN = 16                 # cuda/common/workspace.cuh kWorkspaceAlign
_MAX_SLAB = 4096                     # queries per slab (knn.cu, mahalanobis.cu)
_TILE_COLS = 128                     # chunks are whole pairwise tiles
_KNN_TILE_BYTES = 1 << 28            # 256 MiB keys tile
_KNN_MAX_CHUNK = 1 << 18
_MAHALANOBIS_MAX_CHUNK = 16384
_TINY_REST = 1e-20                   # csrc/ood/logit_math.h kTinyRest
_FLT_MAX = float(np.finfo(np.float32).max)
_INT_MAX = 2**31 - 1
SCORE_SEGMENT = 4096                 # cuda/score/rows.cuh kSegment: row elements per warp
_LOG_2PI = math.log(2 * math.pi)


class FakeStream:
    """Stands in for ``torch.cuda.current_stream(dev)``: ``cuda_stream`` is 0."""

    cuda_stream = 0


def _round_up(a: int, align: int) -> int:
    return -(-a // align) * align


def _fail(op: str, msg: str):
    raise ValueError(f"gencore._cuda.{op}: {msg}")


def _check_dim(op: str, name: str, value: int) -> None:
    """A feature dimension: the kernels index it with int."""
    if value < 1 or value > _INT_MAX:
        _fail(op, f"{name} must be in [1, 2^31 - 1], got {value}")


def _view(ptr: int, shape: tuple, dtype, name: str, op: str) -> np.ndarray:
    """A C-contiguous numpy view of `shape` elements of `dtype` at host address ptr."""
    dtype = np.dtype(dtype)
    count = math.prod(shape)
    if count == 0:
        return np.empty(shape, dtype)
    if not isinstance(ptr, int) or ptr == 0:
        _fail(op, f"{name} is null (a data pointer is null)")
    if ptr % dtype.itemsize:
        _fail(op, f"{name} = {ptr:#x} is not aligned to its {dtype} elements")
    raw = (ctypes.c_byte * (count * dtype.itemsize)).from_address(ptr)
    return np.ctypeslib.as_array(raw).view(dtype).reshape(shape)


def _canonical(key: np.ndarray) -> np.ndarray:
    """pairwise_tile.cuh canonical_key: -0 -> +0, every NaN -> one NaN."""
    key = key + F32(0)  # -0 + 0 = +0
    key[np.isnan(key)] = np.nan
    return key


def _pairwise_keys(a: np.ndarray, b: np.ndarray, l2: bool) -> np.ndarray:
    """cuda/common/pairwise_tile.cuh in numpy: a [m, D], b [n, D] float32 -> keys [m, n] float32,
    l2: fma(-2, a.b, ||a||^2 + ||b||^2) clamped at 0 (NaN stays NaN); ip: -a.b. Dots and norms
    are formed in float64 and rounded to float32, as the kernel's fp32 FMA chain is (to its
    rounding); the combination rounds like the kernel's, so overflow gives inf / NaN as there."""
    a64, b64 = a.astype(F64), b.astype(F64)
    with np.errstate(over="ignore", invalid="ignore"):
        dot = (a64 @ b64.T).astype(F32)
        if not l2:
            return _canonical(-dot)
        an = (a64 * a64).sum(1).astype(F32)
        bn = (b64 * b64).sum(1).astype(F32)
        s = an[:, None] + bn[None, :]                                 # float32, as qn + bn
        key = (s.astype(F64) - 2.0 * dot.astype(F64)).astype(F32)     # one rounding, as fmaf
        key = np.where(key < 0, F32(0), key)                          # NaN < 0 is False: stays
    return _canonical(key)


def _row_summary(x: np.ndarray, inv_t: float):
    """logits.cu summarise for every row: max m (float32), first argmax k, finite,
    rest = sum_{j != k} float64(expf((l_j - m) * inv_t))."""
    n = x.shape[0]
    finite = np.isfinite(x).all(1)
    safe = np.where(finite[:, None], x, F32(0))
    k = safe.argmax(1)
    m = safe[np.arange(n), k]
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        e = np.exp((safe - m[:, None]) * F32(inv_t)).astype(F64)
    e[np.arange(n), k] = 0.0
    return m, k, finite, e.sum(1)


def _log_rest(x: np.ndarray, m: np.ndarray, k: np.ndarray, rest: np.ndarray) -> np.ndarray:
    """logits.cu log_rest: log(rest), or for rest < 1e-20 around the second-largest logit."""
    n, c = x.shape
    with np.errstate(divide="ignore"):
        out = np.log(rest)
    tiny = rest < _TINY_REST
    if c == 1:
        return np.where(tiny, -np.inf, out)
    others = x.astype(F64)
    others[np.arange(n), k] = -np.inf
    m2 = others.max(1)
    with np.errstate(under="ignore", invalid="ignore"):  # rows with inf are NaN in the end anyway
        rest2 = np.exp(others - m2[:, None]).sum(1)
    return np.where(tiny, (m2 - m.astype(F64)) + np.log(rest2), out)


def _gen(x: np.ndarray, m, k, rest, gamma: float, top_m: int) -> np.ndarray:
    """logits.cu gen_row: -sum over the top_m largest logits of gen_term (logit_math.h)."""
    n, c = x.shape
    unique = rest < 1.0                          # p_k > 1/2: no other class ties with k
    log_s = np.log1p(rest)
    lr = np.where(unique, _log_rest(x, m, k, rest), 0.0)
    top = -np.sort(-x, axis=1)[:, :min(top_m, c)].astype(F64)  # descending, copies included
    z = top - m.astype(F64)[:, None]
    log_p = z - log_s[:, None]
    unique_max = unique[:, None] & (z == 0)
    with np.errstate(under="ignore", divide="ignore", invalid="ignore"):
        log_1mp = np.where(unique_max, (lr - log_s)[:, None], np.log1p(-np.exp(log_p)))
        terms = np.exp(gamma * (log_p + log_1mp))
    return -terms.sum(1)


def _kl(x: np.ndarray, m, k, rest, log_templates: np.ndarray) -> np.ndarray:
    """logits.cu kl_row: -(dot / (1 + rest) - log1p(rest)), dot = sum_j e_j (z_j - log d_kj)
    over e_j = expf(z_j) > 0 (e_k = 1), z = l - m in float32."""
    n = x.shape[0]
    z = x - m[:, None]                            # float32
    with np.errstate(under="ignore"):
        e = np.exp(z)
    e[np.arange(n), k] = F32(1)
    log_d = log_templates[k].astype(F64)          # [N, C]: row k of each row's template
    with np.errstate(invalid="ignore"):
        contrib = np.where(e > 0, e.astype(F64) * (z.astype(F64) - log_d), 0.0)
    return -(contrib.sum(1) / (1.0 + rest) - np.log1p(rest))


def _fma(a, b, c) -> np.ndarray:
    """fmaf(a, b, c) in float32: the float32 product is exact in float64 (one rounding at the end,
    double rounding aside, within an ulp of the kernels' FMA)."""
    return (np.asarray(a, F32).astype(F64) * np.asarray(b, F32).astype(F64) + np.asarray(c, F32).astype(F64)).astype(F32)


def _shifted_std(v: np.ndarray) -> np.ndarray:
    """cuda/ode/step.cu: the population std of each row from float64 sums shifted by the row's first
    element, rounded to float32."""
    dev = v.astype(F64) - v[:, :1].astype(F64)
    mean = dev.mean(1)
    return np.sqrt(np.maximum((dev * dev).mean(1) - mean * mean, 0.0)).astype(F32)


def _scaled_quantile(a: np.ndarray, q: float, s: np.ndarray) -> np.ndarray:
    """cuda/ode/step.cu scaled_quantile: torch.quantile(a, q) of each row of a >= 0 (linear), its two
    order statistics times s, positions, weight and lerp in float32 as torch forms them."""
    m = a.shape[1]
    rank = F32(q) * F32(m - 1)
    lo, hi = min(int(rank), m - 1), min(int(np.ceil(rank)), m - 1)
    weight = F32(rank - F32(int(rank)))
    ordered = np.sort(a, axis=1)  # NaN rows sort anywhere: the caller replaces their t
    x, y = ordered[:, lo] * s, ordered[:, hi] * s
    if abs(weight) < 0.5:
        return _fma(weight, y - x, x)
    return _fma(-(y - x), F32(1) - weight, y)


class FakeCuda:
    """The ``gencore._cuda`` API over host pointers (see the module docstring).

    ``calls`` counts calls per kernel (refused ones included); ``workspaces``
    records (op, workspace_bytes) of each call that takes a workspace.
    """

    def __init__(self, devices: int = 1, capability: tuple[int, int] = (9, 0), archs: str = "80;90"):
        self.devices = devices
        self.capability = capability
        self.archs = archs
        self.calls: collections.Counter = collections.Counter()
        self.workspaces: list[tuple[str, int]] = []

    # ------------------------------------------------------------ runtime queries

    def device_count(self) -> int:
        return self.devices

    def runtime_version(self) -> int:
        return 13000

    def driver_version(self) -> int:
        return 13000

    def compiled_archs(self) -> str:
        return self.archs

    def has_kernel_image(self, device: int) -> bool:
        return 0 <= device < self.devices

    def device_capability(self, device: int) -> tuple[int, int]:
        return self.capability if 0 <= device < self.devices else (0, 0)

    # ------------------------------------------------------------ shared checks

    def _enter(self, op: str, device: int, stream: int) -> None:
        """What the kernels' DeviceGuard would refuse, before any work."""
        if not isinstance(stream, int):
            raise TypeError(f"gencore._cuda.{op}: stream must be an int (cuda_stream), got {type(stream)}")
        if not isinstance(device, int) or not 0 <= device < self.devices:
            raise RuntimeError(f"gencore CUDA error: cudaSetDevice({device}) failed with "
                               "cudaErrorInvalidDevice (invalid device ordinal)")

    def _start(self, op: str, rows: int, workspace_ptr: int, workspace_bytes: int, need: int, device: int,
               stream: int) -> bool:
        """After the size checks, as the drivers do: the workspace, then nothing more for 0 rows,
        else the device. True when there is work."""
        if rows < 0:
            _fail(op, f"Q must be >= 0, got {rows}")
        self._workspace(op, workspace_ptr, workspace_bytes, need)
        if rows == 0:
            return False
        self._enter(op, device, stream)
        return True

    def _workspace(self, op: str, ptr: int, nbytes: int, need: int) -> None:
        """workspace.cuh Workspace: size, null and alignment checks; then the fake
        overwrites the `need` bytes the kernels may use."""
        self.workspaces.append((op, nbytes))
        if nbytes < need:
            _fail(op, f"workspace too small: {nbytes} bytes, need {need} (see {op}_workspace_bytes)")
        if need > 0 and not ptr:
            _fail(op, "workspace pointer is null")
        if need > 0 and ptr % WORKSPACE_ALIGN:
            _fail(op, f"workspace must be {WORKSPACE_ALIGN}-byte aligned")
        if need > 0:
            _view(ptr, (need,), np.uint8, "workspace", op)[:] = 0xFF

    # ------------------------------------------------------------ kNN

    def knn_max_k(self) -> int:
        return KNN_MAX_K

    def knn_workspace_bytes(self, Q: int, N: int, D: int, k: int) -> int:
        if Q < 0 or N < 0:
            _fail("knn_workspace_bytes", f"need Q >= 0 and N >= 0, got Q={Q}, N={N}")
        slab = min(Q, _MAX_SLAB)
        if slab == 0:
            return 0
        fit = _KNN_TILE_BYTES // (4 * slab) // _TILE_COLS * _TILE_COLS
        chunk = min(_round_up(N, _TILE_COLS), _KNN_MAX_CHUNK, fit)
        return 4 * slab * chunk

    def knn(self, queries_ptr, bank_ptr, Q, N, D, k, metric, values_ptr, indices_ptr, workspace_ptr,
            workspace_bytes, stream, device):
        """queries [Q, D], bank [N, D] float32 -> values [Q, k] float32, indices [Q, k] int64, best
        first: metric 0 squared L2 ascending, 1 inner product descending; ties to the lower index,
        NaN keys last."""
        op = "knn"
        self.calls[op] += 1
        if metric not in (0, 1):
            _fail(op, f"metric must be 0 (squared L2) or 1 (inner product), got {metric}")
        _check_dim(op, "D", D)
        if k < 1 or k > N:
            _fail(op, f"k must be in [1, N={N}], got {k}")
        if k > KNN_MAX_K:
            _fail(op, f"k must be <= {KNN_MAX_K} (knn_max_k), got {k}")
        need = self.knn_workspace_bytes(max(Q, 0), N, D, k)
        if not self._start(op, Q, workspace_ptr, workspace_bytes, need, device, stream):
            return
        x = _view(queries_ptr, (Q, D), F32, "queries", op)
        y = _view(bank_ptr, (N, D), F32, "bank", op)
        values = _view(values_ptr, (Q, k), F32, "values", op)
        indices = _view(indices_ptr, (Q, k), np.int64, "indices", op)
        keys = _pairwise_keys(x, y, l2=metric == 0)
        # Stable sort of the float32 keys: equal keys keep bank order; numpy sorts NaN last.
        order = np.argsort(keys, axis=1, kind="stable")[:, :k]
        best = np.take_along_axis(keys, order, 1)
        values[:] = best if metric == 0 else F32(0) - best  # 0 - x: a zero score is +0
        indices[:] = order

    # ------------------------------------------------------------ Mahalanobis

    def mahalanobis_workspace_bytes(self, Q: int, C: int, R: int, reduce: int) -> int:
        op = "mahalanobis_workspace_bytes"
        if reduce not in (0, 1):
            _fail(op, f"reduce must be 0 (none) or 1 (min), got {reduce}")
        if Q < 0 or C < 0:
            _fail(op, f"need Q >= 0 and C >= 0, got Q={Q}, C={C}")
        slab = min(Q, _MAX_SLAB)
        chunk = min(_round_up(C, _TILE_COLS), _MAHALANOBIS_MAX_CHUNK) if slab else 0
        return 4 * slab * chunk + (4 * slab if reduce == 0 else 0)

    def mahalanobis(self, z_ptr, mt_ptr, Q, C, R, reduce, out_ptr, nearest_ptr, workspace_ptr, workspace_bytes,
                    stream, device):
        """z [Q, R], mt [C, R] float32 -> out [Q, C] (reduce 0) or [Q] (reduce 1) float32 =
        max(||z||^2 + ||mt||^2 - 2 z.mt, 0), nearest [Q] int64: the lowest class among equal
        (clamped) distances; a NaN distance wins the min."""
        op = "mahalanobis"
        self.calls[op] += 1
        if reduce not in (0, 1):
            _fail(op, f"reduce must be 0 (none) or 1 (min), got {reduce}")
        if C < 1:
            _fail(op, f"C must be >= 1, got {C}")
        _check_dim(op, "R", R)
        need = self.mahalanobis_workspace_bytes(max(Q, 0), C, R, reduce)
        if not self._start(op, Q, workspace_ptr, workspace_bytes, need, device, stream):
            return
        z = _view(z_ptr, (Q, R), F32, "z", op)
        mt = _view(mt_ptr, (C, R), F32, "mt", op)
        out = _view(out_ptr, (Q, C) if reduce == 0 else (Q,), F32, "out", op)
        nearest = _view(nearest_ptr, (Q,), np.int64, "nearest", op)
        d = _pairwise_keys(z, mt, l2=True)
        near = d.argmin(1)  # first minimum; numpy's argmin returns the first NaN, as the kernel
        out[:] = d if reduce == 0 else d[np.arange(Q), near]
        nearest[:] = near

    # ------------------------------------------------------------ logit scores, residual / ViM

    def logit_scores(self, logits_ptr, N, C, score, temperature, gamma, top_m, log_templates_ptr, out_ptr,
                     stream, device):
        """logits [N, C] float32 -> out [N] float32; score 0 max logit, 1 MSP, 2 energy, 3 GEN, 4 KL
        matching (log_templates [C, C]); a row with NaN/inf gives NaN."""
        op = "logit_scores"
        self.calls[op] += 1
        if score not in range(5):
            _fail(op, f"unknown score code {score}")
        if N < 0 or C < 1:
            _fail(op, f"need N >= 0 and C >= 1, got N={N}, C={C}")
        if not (temperature > 0) or not math.isfinite(temperature):
            _fail(op, "temperature must be finite and > 0")
        if score == 3 and top_m < 1:
            _fail(op, "top_m must be >= 1")
        if score == 4 and not log_templates_ptr:
            _fail(op, "KL matching needs log_templates")
        if N == 0:
            return
        self._enter(op, device, stream)
        x = _view(logits_ptr, (N, C), F32, "logits", op)
        out = _view(out_ptr, (N,), F32, "out", op)
        t = temperature if score in (1, 2) else 1.0
        inv_t = float(F32(min(1.0 / t, _FLT_MAX)))  # tiny T: no 0 * inf = NaN
        m, k, finite, rest = _row_summary(x, inv_t)
        if score == 0:
            v = m.astype(F64)
        elif score == 1:
            v = 1.0 / (1.0 + rest)
        elif score == 2:
            v = m.astype(F64) + t * np.log1p(rest)
        elif score == 3:
            v = _gen(x, m, k, rest, gamma, top_m)
        else:
            v = _kl(x, m, k, rest, _view(log_templates_ptr, (C, C), F32, "log_templates", op))
        out[:] = np.where(finite, v, np.nan).astype(F32)

    def residual_scores(self, residual_ptr, N, D, logits_ptr, C, alpha, out_ptr, stream, device):
        """residual [N, D] float32 -> out [N] float32 = -||residual_i||, or with logits [N, C]
        (logits_ptr != 0) logsumexp(logits_i) - alpha ||residual_i||."""
        op = "residual_scores"
        self.calls[op] += 1
        if N < 0 or D < 1:
            _fail(op, "need N >= 0 and D >= 1")
        if logits_ptr and C < 1:
            _fail(op, "logits need C >= 1")
        if not math.isfinite(alpha):
            _fail(op, "alpha must be finite")
        if N == 0:
            return
        self._enter(op, device, stream)
        e = _view(residual_ptr, (N, D), F32, "residual", op).astype(F64)
        out = _view(out_ptr, (N,), F32, "out", op)
        r = np.sqrt((e * e).sum(1))
        if not logits_ptr:
            out[:] = (-r).astype(F32)
            return
        m, _, finite, rest = _row_summary(_view(logits_ptr, (N, C), F32, "logits", op), 1.0)
        out[:] = np.where(finite, m.astype(F64) + np.log1p(rest) - alpha * r, np.nan).astype(F32)

    # ------------------------------------------------------------ score: data-set denoiser tile

    def dataset_denoise_tile(self, scores_ptr, B, T, tile_sq_ptr, log_w_ptr, sigma_ptr, alpha_ptr, running_max_ptr,
                             total_ptr, rescale_ptr, stream, device, cost=0, x_sq_ptr=0):
        """scores [B, T] in place (x'.y'^T -> exp(l - m')), tile_sq [T], log_w [T] (0: none), sigma,
        alpha [B], x_sq [B] (the euclidean costs); running_max, total [B] in place, rescale [B] out
        (cuda/score/dataset_denoise.cuh)."""
        op = "dataset_denoise_tile"
        self.calls[op] += 1
        if B < 0 or T < 1:
            _fail(op, f"need B >= 0 and T >= 1, got B={B}, T={T}")
        if cost not in (0, 1, 2):
            _fail(op, f"cost must be 0 (squared), 1 (euclidean) or 2 (euclidean_inverse), got {cost}")
        if B == 0:
            return
        _require(op, scores_ptr, tile_sq_ptr, sigma_ptr, alpha_ptr, running_max_ptr, total_ptr, rescale_ptr)
        if cost != 0 and not x_sq_ptr:
            _fail(op, "the euclidean costs need x_sq")
        self._enter(op, device, stream)
        scores = _view(scores_ptr, (B, T), F32, "scores", op)
        tile_sq = _view(tile_sq_ptr, (T,), F32, "tile_sq", op)
        sigma, alpha = (_view(p, (B,), F32, n, op) for p, n in ((sigma_ptr, "sigma"), (alpha_ptr, "alpha")))
        running_max, total, rescale = (_view(p, (B,), F32, n, op) for p, n in (
            (running_max_ptr, "running_max"), (total_ptr, "total"), (rescale_ptr, "rescale")))
        s64, a64 = sigma.astype(F64), alpha.astype(F64)
        with np.errstate(all="ignore"):
            if cost == 0:
                ca = (a64 / (s64 * s64)).astype(F32)                        # formed in double, as the kernel
                cq = (0.5 * a64 * a64 / (s64 * s64)).astype(F32)
                quad = cq[:, None] * tile_sq[None, :]                       # float32 product
                logits = (ca.astype(F64)[:, None] * scores.astype(F64) - quad.astype(F64)).astype(F32)  # fmaf
            else:
                ca = (2.0 * a64 / (s64 * s64)).astype(F32)
                cq = (a64 * a64 / (s64 * s64)).astype(F32)
                co = (_view(x_sq_ptr, (B,), F32, "x_sq", op).astype(F64) / (s64 * s64)).astype(F32)
                u2 = (co.astype(F64)[:, None] + cq.astype(F64)[:, None] * tile_sq.astype(F64)[None, :]
                      - ca.astype(F64)[:, None] * scores.astype(F64)).astype(F32)   # two fmaf
                near = F32(16) * np.finfo(F32).eps                                # kCoincidentUlps ulp
                apart = u2 > ((near * cq).astype(F64)[:, None] * tile_sq.astype(F64)[None, :]
                              + (near * co).astype(F64)[:, None]).astype(F32)
                u = np.where(apart, np.sqrt(np.maximum(u2, F32(0))), F32(0))
                logits = -u if cost == 1 else np.where(apart, -(u + F32(0.5) * np.log(np.maximum(u2, F32(1e-38)))),
                                                       F32(-np.inf))
            if log_w_ptr:
                logits = logits + _view(log_w_ptr, (T,), F32, "log_w", op)[None, :]
            new_max = np.fmax(running_max, np.fmax.reduce(logits, axis=1, initial=-np.inf))  # NaN skipped
            shift = np.where(np.isfinite(new_max), new_max, F32(0))
            p = np.exp(logits - shift[:, None])
            r = np.exp(running_max - shift)
            total[:] = (total.astype(F64) * r + p.sum(1, dtype=F64)).astype(F32)
        scores[:] = p
        rescale[:] = r
        running_max[:] = new_max

    # ------------------------------------------------------------ score: Gaussian mixture

    def gmm_score(self, x_ptr, B, d, means_ptr, K, log_weights_ptr, eigvals_ptr, sigma_ptr, alpha_ptr,
                  log_prob_out_ptr, score_out_ptr, stream, device):
        """x [B, d], means [K, d], log_weights [K], eigvals [K, d] (iso / diagonal variances), sigma,
        alpha [B] -> log_prob [B], score [B, d] (cuda/score/gmm.cuh)."""
        op = "gmm_score"
        self.calls[op] += 1
        _check_gmm_sizes(op, B, d, K, "K")
        if B == 0:
            return
        _require(op, x_ptr, means_ptr, log_weights_ptr, eigvals_ptr, sigma_ptr, alpha_ptr, log_prob_out_ptr,
                 score_out_ptr)
        self._enter(op, device, stream)
        x = _view(x_ptr, (B, d), F32, "x", op)
        means = _view(means_ptr, (K, d), F32, "means", op)
        eigvals = _view(eigvals_ptr, (K, d), F32, "eigvals", op)
        log_w = _view(log_weights_ptr, (K,), F32, "log_weights", op)
        smoothing = _smoothing(_view(sigma_ptr, (B,), F32, "sigma", op), _view(alpha_ptr, (B,), F32, "alpha", op))
        log_n = np.empty((B, K), F64)
        for k in range(K):   # O(B d) at a time, as the kernel
            w, log_n[:, k] = _gmm_terms(x, means[k][None, :], eigvals[k][None, :], log_w[k], smoothing)
        with np.errstate(all="ignore"):
            top = log_n.max(1)
            log_prob = top + np.log(np.exp(log_n - top[:, None]).sum(1))
            score = np.zeros((B, d), F64)
            for k in range(K):
                w, _ = _gmm_terms(x, means[k][None, :], eigvals[k][None, :], log_w[k], smoothing)
                score -= np.exp(log_n[:, k] - log_prob)[:, None] * w
        _view(log_prob_out_ptr, (B,), F32, "log_prob_out", op)[:] = log_prob.astype(F32)
        _view(score_out_ptr, (B, d), F32, "score_out", op)[:] = score.astype(F32)

    def gmm_score_tile_workspace_bytes(self, B: int, C: int) -> int:
        if B < 0 or C < 0:
            _fail("gmm_score_tile_workspace_bytes", f"need B >= 0 and C >= 0, got B={B}, C={C}")
        return 4 * B * C

    def gmm_score_tile(self, zx_ptr, B, C, d, rotated_means_ptr, log_weights_ptr, eigvals_ptr, sigma_ptr, alpha_ptr,
                       running_max_ptr, total_ptr, rescale_ptr, workspace_ptr, workspace_bytes, stream, device):
        """zx [B, C, d] in place (x U_k -> -p_k (z / c)_k), rotated_means [C, d], log_weights [C],
        eigvals [C, d], sigma, alpha [B]; running_max, total [B] in place, rescale [B] out."""
        op = "gmm_score_tile"
        self.calls[op] += 1
        _check_gmm_sizes(op, B, d, C, "C")
        self._workspace(op, workspace_ptr, workspace_bytes, self.gmm_score_tile_workspace_bytes(B, C))
        if B == 0:
            return
        _require(op, zx_ptr, rotated_means_ptr, log_weights_ptr, eigvals_ptr, sigma_ptr, alpha_ptr, running_max_ptr,
                 total_ptr, rescale_ptr)
        self._enter(op, device, stream)
        zx = _view(zx_ptr, (B, C, d), F32, "zx", op)
        means = _view(rotated_means_ptr, (C, d), F32, "rotated_means", op)
        eigvals = _view(eigvals_ptr, (C, d), F32, "eigvals", op)
        log_w = _view(log_weights_ptr, (C,), F32, "log_weights", op)
        smoothing = _smoothing(_view(sigma_ptr, (B,), F32, "sigma", op), _view(alpha_ptr, (B,), F32, "alpha", op))
        running_max, total, rescale = (_view(p, (B,), F32, n, op) for p, n in (
            (running_max_ptr, "running_max"), (total_ptr, "total"), (rescale_ptr, "rescale")))
        w, log_n = _gmm_terms(zx, means[None], eigvals[None], log_w[None], tuple(v[:, None] for v in smoothing))
        log_n = log_n.astype(F32)                                        # the kernel's log N is float32
        with np.errstate(all="ignore"):
            new_max = np.fmax(running_max, np.fmax.reduce(log_n, axis=1, initial=-np.inf))
            shift = np.where(np.isfinite(new_max), new_max, F32(0))
            p = np.exp(log_n - shift[:, None])
            r = np.exp(running_max - shift)
            total[:] = (total.astype(F64) * r + p.sum(1, dtype=F64)).astype(F32)
            zx[:] = -p[:, :, None] * w.astype(F32)
        rescale[:] = r
        running_max[:] = new_max

    # ------------------------------------------------------------ ot: sliced Wasserstein's 1-D step

    def sliced_1d(self, xs_ptr, ys_ptr, cx_ptr, cy_ptr, P, n, m, p, out_ptr, grad_xs_out_ptr, grad_ys_out_ptr,
                  stream, device):
        """cuda/ot/sliced.cuh: out [P] = sum_ij overlap_ij |xs_i - ys_j|^p over the quantile
        intervals of the cumulative weights cx, cy (the last of each reaching max(cx[-1],
        cy[-1])); grad_xs / grad_ys (both or neither) its gradient in the sorted order."""
        op = "sliced_1d"
        self.calls[op] += 1
        if P < 0 or n < 0 or m < 0:
            _fail(op, f"need P, n, m >= 0, got P={P}, n={n}, m={m}")
        if not (p > 0.0 and math.isfinite(p)):
            _fail(op, f"p must be finite and > 0, got {p}")
        if bool(grad_xs_out_ptr) != bool(grad_ys_out_ptr):
            _fail(op, "grad_xs and grad_ys: both or neither")
        if P == 0:
            return
        if n == 0 or m == 0:
            _fail(op, "x and y need at least one point each")
        _require(op, xs_ptr, ys_ptr, cx_ptr, cy_ptr, out_ptr)
        self._enter(op, device, stream)
        xs, ys = _view(xs_ptr, (P, n), F32, "xs", op).astype(F64), _view(ys_ptr, (P, m), F32, "ys", op).astype(F64)
        cx, cy = _view(cx_ptr, (P, n), F64, "cx", op), _view(cy_ptr, (P, m), F64, "cy", op)
        top = np.maximum(cx[:, -1], cy[:, -1])[:, None]
        upper_x, upper_y = np.concatenate([cx[:, :-1], top], 1), np.concatenate([cy[:, :-1], top], 1)
        lower_x, lower_y = np.concatenate([np.zeros((P, 1)), cx[:, :-1]], 1), np.concatenate([np.zeros((P, 1)),
                                                                                              cy[:, :-1]], 1)
        overlap = np.maximum(np.minimum(upper_x[:, :, None], upper_y[:, None, :])
                             - np.maximum(lower_x[:, :, None], lower_y[:, None, :]), 0.0)   # [P, n, m]
        d = xs[:, :, None] - ys[:, None, :]
        _view(out_ptr, (P,), F32, "out", op)[:] = (overlap * np.abs(d) ** p).sum((1, 2)).astype(F32)
        if grad_xs_out_ptr:
            with np.errstate(all="ignore"):
                slope = np.where(d == 0.0, 0.0, p * np.abs(d) ** (p - 1.0) * np.sign(d))
            _view(grad_xs_out_ptr, (P, n), F32, "grad_xs_out", op)[:] = (overlap * slope).sum(2).astype(F32)
            _view(grad_ys_out_ptr, (P, m), F32, "grad_ys_out", op)[:] = (-(overlap * slope)).sum(1).astype(F32)

    # ------------------------------------------------------------ ot: dense Sinkhorn

    def sinkhorn_dense_workspace_bytes(self, B, n, m):
        if B < 0 or n < 0 or m < 0:
            _fail("sinkhorn_dense_workspace_bytes", "sizes must be >= 0")
        return 4 * B * (n + m)

    def sinkhorn_dense(self, M_ptr, a_ptr, b_ptr, B, n, m, reg, damping, tol, max_iter, plateau, f_out_ptr,
                       g_out_ptr, n_iter_out_ptr, error_out_ptr, status_out_ptr, workspace_ptr, workspace_bytes,
                       stream, device):
        """cuda/ot/sinkhorn_dense.cuh: per problem, from f = g = 0, alternate f~ = -reg damping
        LSE_j(log b + g / reg - M / reg), error = sum a |1 - exp(min((f - f~) / reg, 60))| / sum a,
        g = -reg damping LSE_i(log a + f / reg - M / reg), until error <= tol (status 0), no new
        best error for `plateau` iterations (2) or max_iter (1); float32 values, float64 error."""
        op = "sinkhorn_dense"
        self.calls[op] += 1
        if B < 0:
            _fail(op, f"B must be >= 0, got {B}")
        if not (reg > 0.0 and math.isfinite(reg)):
            _fail(op, f"reg must be finite and > 0, got {reg}")
        if not 0.0 < damping <= 1.0:
            _fail(op, f"damping must be in (0, 1], got {damping}")
        if not tol >= 0.0:
            _fail(op, f"tol must be >= 0, got {tol}")
        if max_iter < 1 or plateau < 1:
            _fail(op, "max_iter and plateau must be >= 1")
        self._workspace(op, workspace_ptr, workspace_bytes, 4 * B * (n + m))
        if B == 0:
            return
        if n < 1 or m < 1:
            _fail(op, f"both measures need at least one point, got n={n}, m={m}")
        _require(op, M_ptr, a_ptr, b_ptr, f_out_ptr, g_out_ptr, n_iter_out_ptr, error_out_ptr, status_out_ptr)
        self._enter(op, device, stream)
        cost = _view(M_ptr, (B, n, m), F32, "M", op)
        a, b = _view(a_ptr, (B, n), F32, "a", op), _view(b_ptr, (B, m), F32, "b", op)
        f_out, g_out = _view(f_out_ptr, (B, n), F32, "f_out", op), _view(g_out_ptr, (B, m), F32, "g_out", op)
        n_iter_out = _view(n_iter_out_ptr, (B,), np.int64, "n_iter_out", op)
        error_out = _view(error_out_ptr, (B,), F64, "error_out", op)
        status_out = _view(status_out_ptr, (B,), np.int64, "status_out", op)
        inv_reg, scale = F32(1.0 / reg), F32(-reg * damping)

        def lse(v, axis):   # -inf terms (no mass) drop out
            top = v.max(axis=axis, keepdims=True)
            return (np.squeeze(top, axis) + np.log(np.exp(v - top).sum(axis=axis, dtype=F64))).astype(F32)

        with np.errstate(divide="ignore"):
            log_a, log_b = np.log(a), np.log(b)
        for k in range(B):
            f, g = np.zeros(n, F32), np.zeros(m, F32)
            best, since_best, it, state, err = math.inf, 0, 0, 1, math.inf
            scaled = cost[k] * inv_reg
            while it < max_iter:
                f_new = scale * lse((log_b[k] + g * inv_reg)[None, :] - scaled, 1)
                change = np.minimum((f - f_new).astype(F64) / reg, 60.0)
                err = float((a[k].astype(F64) * np.abs(1.0 - np.exp(change))).sum() / a[k].astype(F64).sum())
                f = f_new
                g = scale * lse((log_a[k] + f * inv_reg)[:, None] - scaled, 0)
                it += 1
                if err <= tol:
                    state = 0
                    break
                if err < best:
                    best, since_best = err, 0
                else:
                    since_best += 1
                    if since_best >= plateau:
                        state = 2
                        break
            f_out[k], g_out[k], n_iter_out[k], error_out[k], status_out[k] = f, g, it, err, state

    # ------------------------------------------------------------ score: DSM loss, DMD gradient

    def dsm_loss_workspace_bytes(self, B: int, M: int) -> int:
        _check_rows("dsm_loss_workspace_bytes", B, M)
        return _partials_bytes(B, M)

    def dsm_loss(self, raw_ptr, x_ptr, target_ptr, B, M, c_skip_ptr, c_out_ptr, weight_ptr, loss_out_ptr,
                 workspace_ptr, workspace_bytes, stream, device):
        """raw, x, target [B, M], c_skip, c_out, weight [B] -> loss [B] = weight * mean_j
        (c_skip x + c_out raw - target)^2 (weight * 0 for M = 0)."""
        op = "dsm_loss"
        self.calls[op] += 1
        _check_rows(op, B, M)
        self._workspace(op, workspace_ptr, workspace_bytes, _partials_bytes(B, M))
        if B == 0:
            return
        _require(op, c_skip_ptr, c_out_ptr, weight_ptr, loss_out_ptr, *((raw_ptr, x_ptr, target_ptr) if M else ()))
        self._enter(op, device, stream)
        err = _dsm_error(op, raw_ptr, x_ptr, target_ptr, B, M, c_skip_ptr, c_out_ptr)
        _view(loss_out_ptr, (B,), F32, "loss_out", op)[:] = _dsm_loss_of(op, err, weight_ptr, M)

    def dsm_loss_and_grad(self, raw_ptr, x_ptr, target_ptr, B, M, c_skip_ptr, c_out_ptr, weight_ptr, grad_scale,
                          loss_out_ptr, grad_raw_out_ptr, workspace_ptr, workspace_bytes, stream, device):
        """dsm_loss, and grad_raw [B, M] = 2 grad_scale weight c_out (c_skip x + c_out raw - target) / M."""
        op = "dsm_loss_and_grad"
        self.calls[op] += 1
        _check_rows(op, B, M)
        self._workspace(op, workspace_ptr, workspace_bytes, _partials_bytes(B, M))
        if B == 0:
            return
        _require(op, c_skip_ptr, c_out_ptr, weight_ptr, loss_out_ptr,
                 *((raw_ptr, x_ptr, target_ptr, grad_raw_out_ptr) if M else ()))
        self._enter(op, device, stream)
        err = _dsm_error(op, raw_ptr, x_ptr, target_ptr, B, M, c_skip_ptr, c_out_ptr)
        _view(loss_out_ptr, (B,), F32, "loss_out", op)[:] = _dsm_loss_of(op, err, weight_ptr, M)
        if M:
            grad_loss = np.full(B, np.float32(grad_scale), F64)
            _view(grad_raw_out_ptr, (B, M), F32, "grad_raw_out", op)[:] = _dsm_grad_of(op, err, weight_ptr,
                                                                                       c_out_ptr, grad_loss, M)

    def dsm_loss_backward(self, raw_ptr, x_ptr, target_ptr, B, M, c_skip_ptr, c_out_ptr, weight_ptr, grad_loss_ptr,
                          grad_raw_out_ptr, stream, device):
        """grad_raw [B, M] = 2 grad_loss weight c_out (c_skip x + c_out raw - target) / M."""
        op = "dsm_loss_backward"
        self.calls[op] += 1
        _check_rows(op, B, M)
        if B == 0 or M == 0:
            return
        _require(op, raw_ptr, x_ptr, target_ptr, c_skip_ptr, c_out_ptr, weight_ptr, grad_loss_ptr, grad_raw_out_ptr)
        self._enter(op, device, stream)
        err = _dsm_error(op, raw_ptr, x_ptr, target_ptr, B, M, c_skip_ptr, c_out_ptr)
        grad_loss = _view(grad_loss_ptr, (B,), F32, "grad_loss", op).astype(F64)
        _view(grad_raw_out_ptr, (B, M), F32, "grad_raw_out", op)[:] = _dsm_grad_of(op, err, weight_ptr, c_out_ptr,
                                                                                   grad_loss, M)

    def dmd_gradient_workspace_bytes(self, B: int, M: int) -> int:
        _check_rows("dmd_gradient_workspace_bytes", B, M)
        return _partials_bytes(B, M)

    def dmd_gradient(self, x0_ptr, real_ptr, fake_ptr, B, M, out_ptr, workspace_ptr, workspace_bytes, stream,
                     device):
        """x0, real, fake [B, M] -> out [B, M] = (fake - real) / mean_j |x0 - real| (float32), 0 where
        that mean is not > 0."""
        op = "dmd_gradient"
        self.calls[op] += 1
        _check_rows(op, B, M)
        self._workspace(op, workspace_ptr, workspace_bytes, _partials_bytes(B, M))
        if B == 0 or M == 0:
            return
        _require(op, x0_ptr, real_ptr, fake_ptr, out_ptr)
        self._enter(op, device, stream)
        x0, real, fake = (_view(p, (B, M), F32, n, op) for p, n in (
            (x0_ptr, "x0"), (real_ptr, "real"), (fake_ptr, "fake")))
        with np.errstate(all="ignore"):
            norm = (np.abs(x0 - real).astype(F64).sum(1) / M).astype(F32)
            grad = (fake - real) / norm[:, None]
        _view(out_ptr, (B, M), F32, "out", op)[:] = np.where((norm > 0)[:, None], grad, F32(0))


# ---------------------------------------------------------------- score helpers

    # ------------------------------------------------------------ ode: fused step, error norm

    def ode_step(self, x_ptr, d_cond_ptr, d_uncond_ptr, h1_ptr, h2_ptr, h3_ptr, noise_ptr, B, M, coeffs_ptr,
                 guidance_ptr, rescale, threshold, threshold_max, x_next_ptr, d_ptr, stream, device):
        """x, d_cond and the optional (pointer 0) d_uncond, h1, h2, h3, noise [B, M] float32, coeffs
        [B, 6] and guidance [B] float64 -> x_next, d [B, M] float32, as cuda/ode/step.cuh forms
        them: d = fma(w, c - u, u) in float32; rescale by float32 stds from shifted float64 sums;
        the threshold from torch.quantile's positions and lerp in float32 (NaN rows: NaN);
        x_next by an fma chain. Nothing is checked for NaN / inf."""
        op = "ode_step"
        self.calls[op] += 1
        if B < 0 or M < 0:
            _fail(op, f"need B >= 0 and M >= 0, got B={B}, M={M}")
        if M > _INT_MAX:
            _fail(op, f"M must be < 2^31, got {M}")
        if not 0.0 <= rescale <= 1.0:
            _fail(op, f"rescale must be in [0, 1], got {rescale}")
        if not 0.0 <= threshold < 1.0:
            _fail(op, f"threshold must be in [0, 1), got {threshold}")
        if not threshold_max > 0.0:
            _fail(op, f"threshold_max must be > 0, got {threshold_max}")
        if guidance_ptr and not d_uncond_ptr:
            _fail(op, "guidance needs d_uncond")
        if B == 0 or M == 0:
            return
        if not (x_ptr and d_cond_ptr and coeffs_ptr and x_next_ptr and d_ptr):
            _fail(op, "a data pointer is null")
        self._enter(op, device, stream)

        def rows(ptr, name):
            return None if not ptr else _view(ptr, (B, M), F32, name, op)
        x, c = rows(x_ptr, "x"), rows(d_cond_ptr, "d_cond")
        hs = [rows(p, n) for p, n in ((h1_ptr, "h1"), (h2_ptr, "h2"), (h3_ptr, "h3"), (noise_ptr, "noise"))]
        coeffs = _view(coeffs_ptr, (B, 6), F64, "coeffs", op).astype(F32)
        x_next, d_out = rows(x_next_ptr, "x_next"), rows(d_ptr, "d")
        guided = bool(guidance_ptr)
        with np.errstate(all="ignore"):  # non-finite inputs propagate, as on the GPU
            if guided:
                u = rows(d_uncond_ptr, "d_uncond")
                w = _view(guidance_ptr, (B,), F64, "guidance", op).astype(F32)
                d = _fma(w[:, None], c - u, u)
            else:
                d = c.copy()
            s = np.ones((B, 1), F32)
            if rescale > 0 and guided and M > 1:
                std_c, std_d = _shifted_std(c), _shifted_std(d)
                ratio = np.where(std_d > 0, std_c / np.where(std_d > 0, std_d, F32(1)), F32(1))
                s = (rescale * ratio.astype(F64) + (1.0 - rescale)).astype(F32)[:, None]
            if threshold > 0:
                t = np.minimum(np.maximum(_scaled_quantile(np.abs(d), threshold, s[:, 0]), F32(1)),
                               F32(threshold_max))
                t = np.where(np.isnan(d).any(1), F32(np.nan), t)[:, None]
                v = d * s
                d = np.where(np.isnan(v), v, np.maximum(np.minimum(v, t), -t)) / t
            elif rescale > 0 and guided and M > 1:
                d = d * s
            out = _fma(coeffs[:, :1], x, coeffs[:, 1:2] * d)
            for k, h in enumerate(hs):
                if h is not None:
                    out = _fma(coeffs[:, 2 + k:3 + k], h, out)
        d_out[:] = d
        x_next[:] = out

    def ode_error_norm(self, err_ptr, y_ptr, y_new_ptr, B, M, atol, rtol, out_ptr, stream, device):
        """err, y, y_new [B, M] float32 -> out [B] float32 = sqrt(mean((err / s)^2)), s =
        fma(rtol, max(|y|, |y_new|), atol) in float32 (NaN when y or y_new is), quotients and sums
        in float64; 0 for M = 0. Nothing is checked for NaN / inf."""
        op = "ode_error_norm"
        self.calls[op] += 1
        if B < 0 or M < 0:
            _fail(op, f"need B >= 0 and M >= 0, got B={B}, M={M}")
        if not (atol >= 0.0 and rtol >= 0.0 and atol + rtol > 0.0):
            _fail(op, f"atol and rtol must be >= 0 and not both 0, got atol={atol}, rtol={rtol}")
        if B == 0:
            return
        if not out_ptr or (M > 0 and not (err_ptr and y_ptr and y_new_ptr)):
            _fail(op, "a data pointer is null")
        self._enter(op, device, stream)
        out = _view(out_ptr, (B,), F32, "out", op)
        if M == 0:
            out[:] = 0
            return
        e, a, c = (_view(p, (B, M), F32, n, op) for p, n in ((err_ptr, "err"), (y_ptr, "y"), (y_new_ptr, "y_new")))
        with np.errstate(all="ignore"):
            scale = _fma(F32(rtol), np.maximum(np.abs(a), np.abs(c)), F32(atol))  # np.maximum keeps NaN
            r = e.astype(F64) / scale.astype(F64)
            out[:] = np.sqrt((r * r).sum(1) / M).astype(F32)



    # ------------------------------------------------------------ quant: group-quantized matmul

    def group_matmul_tile_rows(self) -> int:
        """cuda/quant/group_matmul.cuh: from this many rows on, the tensor-core tiles run."""
        return 16

    def group_matmul(self, x_ptr, M, K, data_ptr, N, scales_ptr, zeros_ptr, group_size, bits, bias_ptr, out_ptr,
                     stream, device):
        """y [M, N] float32 = x [M, K] . dequant(W)^T (+ bias), any M, as cuda/quant/group_matmul.cu
        (a warp per output row below group_matmul_tile_rows() rows, 3xTF32 tensor-core tiles from
        there): each weight dequantized as (q - z) * s in float32, products summed per output (here
        in float64)."""
        op = "group_matmul"
        self.calls[op] += 1
        if bits not in (4, 8):
            _fail(op, f"bits must be 4 or 8, got {bits}")
        if M < 0 or N < 0 or K < 0 or group_size < 1:
            _fail(op, "need M, N, K >= 0 and group >= 1")
        if M == 0 or N == 0:
            return
        self._enter(op, device, stream)
        w = _dequantized(op, data_ptr, scales_ptr, zeros_ptr, N, K, bits, group_size)
        y = _view(x_ptr, (M, K), F32, "x", op).astype(F64) @ w.astype(F64).T
        if bias_ptr:
            y = y + _view(bias_ptr, (N,), F32, "bias", op).astype(F64)
        _view(out_ptr, (M, N), F32, "out", op)[:] = y.astype(F32)

    def group_matmul_int8_workspace_bytes(self, M: int, K: int, group_size: int) -> int:
        """cuda/quant/group_matmul_int8.cu: codes [M, K] int8, then scales [M, G] float32 (aligned)."""
        if M < 0 or K < 0 or group_size < 1:
            _fail("group_matmul_int8_workspace_bytes", "need M, K >= 0 and group >= 1")
        G = -(-K // group_size) if K else 0
        return _round_up(M * K, WORKSPACE_ALIGN) + 4 * M * G

    def group_matmul_int8(self, x_ptr, M, K, data_ptr, N, scales_ptr, zeros_ptr, group_size, bits, bias_ptr,
                          out_ptr, workspace_ptr, workspace_bytes, stream, device):
        """cuda/quant/group_matmul_int8.cuh: x quantized per row and group to int8 codes in the
        workspace (float32 division, ties to even), then the integer group dots (here exact in
        int64), each group scaled by s * sx (float64 here)."""
        op = "group_matmul_int8"
        self.calls[op] += 1
        if bits not in (4, 8):
            _fail(op, f"bits must be 4 or 8, got {bits}")
        if M < 0 or K < 0 or group_size < 1:
            _fail(op, "need M, K >= 0 and group >= 1")
        self._workspace(op, workspace_ptr, workspace_bytes, self.group_matmul_int8_workspace_bytes(M, K, group_size))
        if M == 0 or N == 0:
            return
        self._enter(op, device, stream)
        G = -(-K // group_size) if K else 0
        x = np.zeros((M, G * group_size), F32)
        x[:, :K] = _view(x_ptr, (M, K), F32, "x", op)
        grouped = x.reshape(M, G, group_size)
        sx = (np.abs(grouped).max(2) / F32(127)).astype(F32)
        sx[sx == 0] = 1
        codes = np.clip(np.rint(grouped / sx[..., None]), -127, 127).astype(np.int64)  # [M, G, S]
        _view(workspace_ptr, (M, K), np.int8, "workspace", op)[:] = codes.reshape(M, -1)[:, :K]
        q = np.zeros((N, G * group_size), np.int64)
        q[:, :K] = _weight_codes(op, data_ptr, N, K, bits)
        q = q.reshape(N, G, group_size)
        dots = np.einsum("mgs,ngs->mng", codes, q)                    # exact integers
        sums = codes.sum(2)                                            # [M, G]
        s = _view(scales_ptr, (N, G), F32, "scales", op).astype(F64)
        z = _view(zeros_ptr, (N, G), F32, "zeros", op).astype(F64)
        y = ((dots - z[None] * sums[:, None, :]) * s[None] * sx.astype(F64)[:, None, :]).sum(2)
        if bias_ptr:
            y = y + _view(bias_ptr, (N,), F32, "bias", op).astype(F64)
        _view(out_ptr, (M, N), F32, "out", op)[:] = y.astype(F32)

    def quant_quantize(self, weight_ptr, N, K, bits, group_size, symmetric, clip_steps, data_out_ptr,
                       scales_out_ptr, zeros_out_ptr, stream, device):
        """cuda/quant/quantize.cuh: per (row, group) the range, the clipping search (float32
        parameters, squared errors in float64), the codes packed low nibble first."""
        op = "quant_quantize"
        self.calls[op] += 1
        _check_quant_layout(op, N, K, bits, group_size)
        if clip_steps < 0:
            _fail(op, f"clip_steps must be >= 0, got {clip_steps}")
        if N == 0 or K == 0:
            return
        _require(op, weight_ptr, data_out_ptr, scales_out_ptr, zeros_out_ptr)
        self._enter(op, device, stream)
        G = -(-K // group_size)
        w = _view(weight_ptr, (N, K), F32, "weight", op)
        grouped = np.zeros((N, G * group_size), F32)
        grouped[:, :K] = w
        grouped = grouped.reshape(N, G, group_size)  # zero padding: quantizes exactly, adds no error
        top, half = F32(2 ** bits - 1), F32(2 ** (bits - 1))
        if symmetric:
            lo, hi = np.zeros((N, G), F32), np.abs(grouped).max(2)
        else:
            lo, hi = np.minimum(grouped.min(2), F32(0)), np.maximum(grouped.max(2), F32(0))

        def params(lo, hi):
            with np.errstate(divide="ignore", invalid="ignore"):
                scale = (hi / (half - F32(1))) if symmetric else ((hi - lo) / top)
                scale = np.where(scale == 0, F32(1), scale).astype(F32)
                zero = np.full_like(scale, half) if symmetric else np.clip(np.rint(-lo / scale), 0, top).astype(F32)
            return scale, zero

        def codes(scale, zero):
            return np.clip(np.rint(grouped / scale[..., None]) + zero[..., None], 0, top).astype(F32)

        def error(scale, zero):
            dq = ((codes(scale, zero) - zero[..., None]) * scale[..., None]).astype(F32)
            return ((grouped.astype(F64) - dq.astype(F64)) ** 2).sum(2)

        scale, zero = params(lo, hi)
        if clip_steps > 1:
            best = error(scale, zero)
            for step in range(1, clip_steps):
                ratio = F32(1.0 - 0.5 * step / clip_steps)
                s, z = params(ratio * lo, ratio * hi)
                e = error(s, z)
                better = e < best
                scale, zero, best = np.where(better, s, scale), np.where(better, z, zero), np.where(better, e, best)
        q = codes(scale, zero).reshape(N, -1)[:, :K].astype(np.uint8)
        _view(scales_out_ptr, (N, G), F32, "scales_out", op)[:] = scale
        _view(zeros_out_ptr, (N, G), F32, "zeros_out", op)[:] = zero
        if bits == 8:
            _view(data_out_ptr, (N, K), np.uint8, "data_out", op)[:] = q
            return
        padded = np.zeros((N, 2 * ((K + 1) // 2)), np.uint8)
        padded[:, :K] = q
        _view(data_out_ptr, (N, (K + 1) // 2), np.uint8, "data_out", op)[:] = padded[:, 0::2] | (padded[:, 1::2] << 4)

    def quant_dequantize(self, data_ptr, scales_ptr, zeros_ptr, N, K, bits, group_size, out_ptr, stream, device):
        """out [N, K] float32 = (q - zero) * scale (cuda/quant/quantize.cuh)."""
        op = "quant_dequantize"
        self.calls[op] += 1
        _check_quant_layout(op, N, K, bits, group_size)
        if N == 0 or K == 0:
            return
        _require(op, data_ptr, scales_ptr, zeros_ptr, out_ptr)
        self._enter(op, device, stream)
        _view(out_ptr, (N, K), F32, "out", op)[:] = _dequantized(op, data_ptr, scales_ptr, zeros_ptr, N, K, bits,
                                                                 group_size)


def _weight_codes(op, data_ptr, N, K, bits) -> np.ndarray:
    """The codes q [N, K] uint8 of the packed weight (int4 low nibble first)."""
    data = _view(data_ptr, (N, (K + 1) // 2 if bits == 4 else K), np.uint8, "data", op)
    return np.stack([data & 0x0F, data >> 4], axis=2).reshape(N, -1)[:, :K] if bits == 4 else data


def _dequantized(op, data_ptr, scales_ptr, zeros_ptr, N, K, bits, group_size) -> np.ndarray:
    """W [N, K] float32 = (q - zero) * scale from the packed codes."""
    G = -(-K // group_size) if K else 0
    codes = _weight_codes(op, data_ptr, N, K, bits)
    per_column = np.arange(K) // group_size
    s = _view(scales_ptr, (N, G), F32, "scales", op)[:, per_column]
    z = _view(zeros_ptr, (N, G), F32, "zeros", op)[:, per_column]
    return ((codes.astype(F32) - z) * s).astype(F32)


def _check_quant_layout(op: str, N: int, K: int, bits: int, group: int) -> None:
    """cuda/quant/quantize.cu check_layout."""
    if N < 0 or K < 0:
        _fail(op, f"need N >= 0 and K >= 0, got N={N}, K={K}")
    if bits not in (4, 8):
        _fail(op, f"bits must be 4 or 8, got {bits}")
    if not (group in (32, 64, 128) or group >= K) or group < 1:
        _fail(op, f"group_size must be 32, 64, 128 or >= K, got {group}")


def _require(op: str, *ptrs) -> None:
    """The kernels' null check, before any work."""
    if not all(ptrs):
        _fail(op, "a data pointer is null")


def _check_rows(op: str, B: int, M: int) -> None:
    if B < 0 or M < 0:
        _fail(op, f"need B >= 0 and M >= 0, got B={B}, M={M}")


def _partials_bytes(B: int, M: int) -> int:
    """cuda/score/rows.cuh partials_layout: 8 B S bytes when a row has S > 1 segments."""
    segments = max(1, -(-M // SCORE_SEGMENT))
    return 8 * B * segments if segments > 1 else 0


def _dsm_loss_of(op, err, weight_ptr, M) -> np.ndarray:
    """loss [B] float32 = weight * mean_j err^2, summed in float64 (weight * 0 for M = 0)."""
    e = err.astype(F64)
    weight = _view(weight_ptr, (err.shape[0],), F32, "weight", op).astype(F64)
    return (weight * ((e * e).sum(1) / M if M else np.zeros(err.shape[0]))).astype(F32)


def _dsm_grad_of(op, err, weight_ptr, c_out_ptr, grad_loss, M) -> np.ndarray:
    """grad_raw [B, M] float32 = float32(2 grad_loss weight c_out / M) * err (the kernels' gradient_factor)."""
    b = err.shape[0]
    weight, c_out = (_view(p, (b,), F32, n, op).astype(F64) for p, n in ((weight_ptr, "weight"), (c_out_ptr, "c_out")))
    scale = (2.0 * grad_loss * weight * c_out / M).astype(F32)
    with np.errstate(all="ignore"):
        return scale[:, None] * err


def _dsm_error(op, raw_ptr, x_ptr, target_ptr, B, M, c_skip_ptr, c_out_ptr) -> np.ndarray:
    """fmaf(c_skip, x, c_out * raw) - target, float32 [B, M], as the kernels form it."""
    raw, x, target = (_view(p, (B, M), F32, n, op) for p, n in (
        (raw_ptr, "raw"), (x_ptr, "x"), (target_ptr, "target")))
    c_skip = _view(c_skip_ptr, (B,), F32, "c_skip", op)
    c_out = _view(c_out_ptr, (B,), F32, "c_out", op)
    with np.errstate(all="ignore"):
        scaled = c_out[:, None] * raw                                             # float32 product
        pred = (c_skip.astype(F64)[:, None] * x.astype(F64) + scaled.astype(F64)).astype(F32)  # one rounding
        return pred - target


def _check_gmm_sizes(op: str, B: int, d: int, K: int, k_name: str) -> None:
    if B < 0:
        _fail(op, f"B must be >= 0, got {B}")
    _check_dim(op, "d", d)
    if K < 1 or K > _INT_MAX:
        _fail(op, f"{k_name} must be in [1, 2^31 - 1], got {K}")


def _smoothing(sigma: np.ndarray, alpha: np.ndarray):
    """(alpha, alpha^2, sigma^2) per query, float32 (squares formed in double), as gmm.cu."""
    a64, s64 = alpha.astype(F64), sigma.astype(F64)
    return alpha, (a64 * a64).astype(F32), (s64 * s64).astype(F32)


def _gmm_terms(x, means, eigvals, log_w, smoothing):
    """(w = z / c float32, log N float64) over the last axis, gmm.cu's elements: z = fmaf(-a, mu, x),
    c = fmaf(a2, lambda, s2) (one rounding each), w = z / c; sums of z w and log c in float64.
    smoothing arrays broadcast against x's leading axes."""
    a, a2, s2 = (v.astype(F64)[..., None] for v in smoothing)
    with np.errstate(all="ignore"):
        z = (x.astype(F64) - a * means.astype(F64)).astype(F32)
        c = (a2 * eigvals.astype(F64) + s2).astype(F32)
        w = z / c
        log_n = log_w.astype(F64) - 0.5 * ((z.astype(F64) * w).sum(-1) + np.log(c.astype(F64)).sum(-1)
                                           + x.shape[-1] * _LOG_2PI)
    return w, log_n
