"""gencore::ode_step and gencore::ode_error_norm, native CPU kernels against the
references of python/gencore/ode/ops/_step.py and _error_norm.py.

The oracle is the reference run on the same inputs in the same compute dtype
(the op's specification, including its float32 roundings); results must be
within a few ulps of the compute dtype times the size of what they sum.

Kernel facts the cases aim at (csrc/ode/step*.cpp, quantile.cpp,
error_norm*.cpp): rows run in whole vectors of 8 / 16 float32 (4 / 8
float64) with scalar tails; plain steps are one pass and cut rows into
chunks when there are fewer rows than threads; rescale and thresholding take
two passes per row; the quantile selects on the whole row up to 1024
elements, above that on the values inside a bracket placed by a strided
sample of the row (falling back to the whole row when the sample misses);
an output that is not finite makes the kernel search the inputs for the one
to blame, and one whose inputs are all finite (an overflow) is no error.
"""
from __future__ import annotations

import itertools

import pytest
import torch

from gencore import _native, _native_call
from gencore.ode.ops import ERROR_NORM, STEP
from gencore.ode.ops._error_norm import _reference as error_norm_reference
from gencore.ode.ops._step import _reference as step_reference

from tests.conftest import cuda_only, native_cpu_only

OPTIONAL = ("d_uncond", "h1", "h2", "h3", "noise")
NAMES = ("x", "d_cond") + OPTIONAL  # positions 0..6 of the op's arguments
ULPS = 16


# ====================================================================== helpers

def randn(rng, *shape, dtype=torch.float32, scale=1.0):
    return (torch.randn(*shape, generator=rng, dtype=torch.float64) * scale).to(dtype)


def eps(dtype):
    return torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps


def step_args(rng, shape, dtype=torch.float32, present=OPTIONAL, guided=True, rescale=0.0, threshold=0.0,
              threshold_max=float("inf"), scale=1.0):
    """The op's 12 arguments: random tensors of `shape` for x, d_cond and the names in
    `present`, coefficients 0 for absent inputs, guidance in [1, 4] if `guided`."""
    b = shape[0]
    tensors = {name: randn(rng, *shape, dtype=dtype, scale=scale) for name in ("x", "d_cond") + tuple(present)}
    coeffs = randn(rng, b, 6, dtype=torch.float64)
    for k, name in enumerate(("h1", "h2", "h3", "noise")):
        if name not in tensors:
            coeffs[:, 2 + k] = 0.0
    guidance = 1 + 3 * torch.rand(b, generator=rng, dtype=torch.float64) if guided else None
    if guided and "d_uncond" not in tensors:
        tensors["d_uncond"] = randn(rng, *shape, dtype=dtype, scale=scale)
    return tuple(tensors.get(name) for name in NAMES) + (coeffs, guidance, rescale, threshold, threshold_max)


def with_tensor(args, name, value):
    i = NAMES.index(name) if name in NAMES else {"coeffs": 7, "guidance": 8}[name]
    return args[:i] + (value,) + args[i + 1:]


def assert_step_close(got, want, args):
    """x_next and d within ULPS eps of the compute dtype times what they sum."""
    x_next, d = got
    want_x, want_d = want
    assert x_next.dtype == want_x.dtype and x_next.shape == want_x.shape
    e = eps(want_x.dtype)
    d_scale = want_d.abs() + 1
    assert ((d - want_d).abs() <= ULPS * e * d_scale).all(), ((d - want_d).abs().max(), "d")
    coeffs = args[7].to(want_x.dtype)
    terms = [args[0], want_d] + [args[i] for i in range(3, 7)]
    x_scale = torch.ones_like(want_x)
    for k, t in enumerate(terms):
        if t is not None:
            c = coeffs[:, k].abs().reshape((-1,) + (1,) * (want_x.dim() - 1))
            x_scale = x_scale + c * t.to(want_x.dtype).abs()
    assert ((x_next - want_x).abs() <= ULPS * e * x_scale).all(), ((x_next - want_x).abs().max(), "x_next")


def run_native(args):
    assert STEP.backend(STEP._check(*args)) == "native-cpu"
    return STEP(*args)


@pytest.fixture
def poisoned(monkeypatch):
    monkeypatch.setattr(_native_call, "POISON", True)


pytestmark = native_cpu_only


# ====================================================================== shapes and optional inputs

SHAPES = [(1, 1), (4,), (3, 0), (2, 0, 4), (1, 4, 8, 8), (3, 33), (2, 15), (2, 1023), (2, 1025), (5, 513),
          (3, 3, 17, 31), (1, 5000)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("mode", ["plain", "guided", "rescale", "threshold", "both"])
def test_native_matches_reference_over_shapes(rng, poisoned, shape, dtype, mode):
    args = step_args(rng, shape, dtype, guided=mode != "plain", rescale=0.7 if mode in ("rescale", "both") else 0.0,
                     threshold=0.9 if mode in ("threshold", "both") else 0.0, threshold_max=3.0, scale=2.0)
    assert_step_close(run_native(args), step_reference(*args), args)


@pytest.mark.parametrize("present", [p for r in range(6) for p in itertools.combinations(OPTIONAL, r)],
                         ids=lambda p: "+".join(p) or "none")
@pytest.mark.parametrize("guided", [False, True])
@pytest.mark.parametrize("threshold", [0.0, 0.8])
def test_every_optional_input_present_or_absent(rng, poisoned, present, guided, threshold):
    args = step_args(rng, (3, 4, 5, 7), torch.float32, present=present, guided=guided, rescale=0.5 if guided else 0.0,
                     threshold=threshold, scale=1.5)
    assert_step_close(run_native(args), step_reference(*args), args)


def test_d_uncond_without_guidance_is_not_used(rng):
    args = step_args(rng, (2, 50), torch.float64, present=("d_uncond",), guided=False)
    x_next, d = run_native(args)
    assert torch.equal(d, args[1])
    assert_step_close((x_next, d), step_reference(*args), args)


@pytest.mark.parametrize("layout", ["strided-columns", "padded-rows", "transposed", "expanded-coeffs"])
def test_non_contiguous_inputs(rng, layout):
    args = step_args(rng, (4, 6, 10), torch.float32, rescale=0.6, threshold=0.75)
    want = step_reference(*args)

    def relayout(t):
        if t is None or t.dim() != 3:
            return t
        if layout == "strided-columns":
            out = torch.empty(4, 6, 20)[..., ::2]
        elif layout == "padded-rows":
            out = torch.empty(4, 7, 10)[:, :6]
        elif layout == "transposed":
            out = torch.empty(4, 10, 6).transpose(1, 2)
        else:
            return t
        out.copy_(t)
        return out
    moved = tuple(relayout(a) if isinstance(a, torch.Tensor) else a for a in args)
    if layout == "expanded-coeffs":
        moved = with_tensor(moved, "coeffs", torch.empty(4, 12, dtype=torch.float64)[:, ::2].copy_(args[7]))
        moved = with_tensor(moved, "guidance", torch.empty(8, dtype=torch.float64)[::2].copy_(args[8]))
    assert_step_close(run_native(moved), want, args)


# ====================================================================== guidance, rescale, thresholding

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("q", [0.001, 0.25, 0.5, 0.9, 0.995, 0.9999])
@pytest.mark.parametrize("m", [7, 1000, 3000, 40000])
def test_quantile_positions(rng, dtype, q, m):
    # Integer values in [-30, 30]: every order statistic is repeated, and a wrong one is off by >= 1 / t.
    x = torch.randint(-30, 31, (3, m), generator=rng).to(dtype)
    x[:, 0] = 1.0  # |1| <= t, so d = 1 / t there
    args = (x, x.clone(), None, None, None, None, None, torch.tensor([[0.0, 1.0, 0, 0, 0, 0]] * 3, dtype=torch.float64),
            None, 0.0, q, float("inf"))
    x_next, d = run_native(args)
    want_x, want_d = step_reference(*args)
    assert_step_close((x_next, d), (want_x, want_d), args)
    t_want = torch.quantile(x.abs(), q, dim=1).clamp(min=1.0)
    t_got = 1 / d[:, 0]
    torch.testing.assert_close(t_got, t_want.to(dtype), rtol=ULPS * eps(dtype), atol=0)


def test_quantile_ties_in_the_interpolated_pair(rng):
    # q (n - 1) falls between two copies of one value, and between the last copy and the next value.
    row_a = torch.tensor([5.0] * 6 + [2.0] * 3 + [9.0])          # sorted |d|: 2 2 2 5 5 5 5 5 5 9
    row_b = torch.tensor([1.5, -4.0, 4.0, 4.0, -7.0, 2.5, 3.0, 8.0, 4.0, -6.0])
    for q in (0.45, 0.5, 0.85, 0.95, 0.3):
        x = torch.stack([row_a, row_b]).double()
        args = (x, x, None, None, None, None, None, torch.tensor([[0.0, 1.0, 0, 0, 0, 0]] * 2, dtype=torch.float64),
                None, 0.0, q, float("inf"))
        _, d = run_native(args)
        _, want = step_reference(*args)
        torch.testing.assert_close(d, want, rtol=1e-15, atol=0)


def test_rows_whose_quantile_is_below_one_are_unchanged(rng):
    x = randn(rng, 4, 300, dtype=torch.float64) * torch.tensor([[0.1], [0.3], [5.0], [0.2]], dtype=torch.float64)
    args = (x, x, None, None, None, None, None, torch.tensor([[0.0, 1.0, 0, 0, 0, 0]] * 4, dtype=torch.float64),
            None, 0.0, 0.9, float("inf"))
    _, d = run_native(args)
    for row in (0, 1, 3):  # quantile_0.9 |d| < 1: t = 1, d / 1 = d
        assert torch.equal(d[row], x[row].clamp(-1, 1)), row
    assert d[2].abs().max() == 1.0 and not torch.equal(d[2], x[2])
    assert_step_close(run_native(args), step_reference(*args), args)


@pytest.mark.parametrize("threshold_max", [0.5, 1.0, 2.0, float("inf")])
def test_threshold_max_caps_t(rng, threshold_max):
    args = step_args(rng, (3, 200), torch.float64, threshold=0.95, threshold_max=threshold_max, scale=10.0)
    x_next, d = run_native(args)
    assert_step_close((x_next, d), step_reference(*args), args)
    if threshold_max <= 1.0:  # t = threshold_max: |d| reaches 1 on every clamped value
        assert (d.abs().amax(1) == 1.0).all()


@pytest.mark.parametrize("rescale", [0.0, 0.3, 1.0])
def test_rescale_to_the_conditional_std(rng, rescale):
    args = step_args(rng, (3, 4, 16, 16), torch.float64, present=("d_uncond",), rescale=rescale, scale=3.0)
    args = with_tensor(args, "d_cond", args[1] + 5.0)  # a mean far from 0: the shifted sums keep the std exact
    x_next, d = run_native(args)
    assert_step_close((x_next, d), step_reference(*args), args)
    if rescale == 1.0:
        torch.testing.assert_close(d.reshape(3, -1).std(1, correction=0), args[1].reshape(3, -1).std(1, correction=0),
                                   rtol=1e-12, atol=0)


def test_rescale_of_constant_rows(rng):
    # std(d) = 0: the ratio is 1 (d unchanged); std(d_cond) = 0 with rescale 1: d becomes 0.
    cond = torch.full((2, 64), 3.0, dtype=torch.float64)
    uncond = cond.clone()
    uncond[1] = randn(rng, 64, dtype=torch.float64)
    coeffs = torch.tensor([[0.0, 1.0, 0, 0, 0, 0]] * 2, dtype=torch.float64)
    args = (cond.clone(), cond, uncond, None, None, None, None, coeffs, torch.tensor([2.0, 1.0], dtype=torch.float64),
            1.0, 0.0, float("inf"))
    x_next, d = run_native(args)
    torch.testing.assert_close(d, step_reference(*args)[1], rtol=1e-14, atol=1e-14)
    assert torch.equal(d[0], cond[0])


def test_quantile_when_the_strided_sample_misleads(rng):
    # 40000 values, and every value the stride-39 sample would read (offset 19) is a large one: the
    # bracket misses the true positions and the selection falls back to the whole row.
    m = 40000
    x = torch.rand(2, m, generator=rng, dtype=torch.float64)
    stride = m // 1024
    x[:, stride // 2::stride] = 50.0
    x[1] = torch.linspace(-3, 3, m, dtype=torch.float64)  # sorted data, for contrast
    args = (x, x, None, None, None, None, None, torch.tensor([[0.0, 1.0, 0, 0, 0, 0]] * 2, dtype=torch.float64),
            None, 0.0, 0.5, float("inf"))
    assert_step_close(run_native(args), step_reference(*args), args)


# ====================================================================== SIMD levels and threads

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_simd_level(rng, simd_level, dtype):
    for shape, guided, rescale, threshold in [((2, 4, 8, 8), False, 0.0, 0.0), ((3, 1037), True, 0.0, 0.0),
                                              ((2, 3001), True, 0.7, 0.95), ((5, 17), True, 0.0, 0.6)]:
        args = step_args(rng, shape, dtype, guided=guided, rescale=rescale, threshold=threshold, scale=2.0)
        assert_step_close(run_native(args), step_reference(*args), args)
        err, y, y_new = (randn(rng, *shape, dtype=dtype) for _ in range(3))
        got = ERROR_NORM(err, y, y_new, 1e-3, 1e-2)
        torch.testing.assert_close(got, error_norm_reference(err, y, y_new, 1e-3, 1e-2), rtol=ULPS * eps(dtype), atol=0)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("shape,mode", [((1, 200000), "plain"), ((2, 70001), "plain"), ((5, 40000), "both"),
                                        ((64, 1500), "guided"), ((7, 9000), "threshold")])
def test_thread_counts_give_the_same_result(rng, num_threads, threads, shape, mode):
    args = step_args(rng, shape, torch.float32, guided=mode != "plain", rescale=0.7 if mode == "both" else 0.0,
                     threshold=0.99 if mode in ("both", "threshold") else 0.0)
    num_threads(1)
    one = run_native(args)
    num_threads(threads)
    many = run_native(args)
    assert torch.equal(one[0], many[0]) and torch.equal(one[1], many[1])
    assert_step_close(many, step_reference(*args), args)


# ====================================================================== NaN / inf

@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("mode", ["plain", "guided", "rescale", "threshold"])
@pytest.mark.parametrize("name", NAMES + ("coeffs", "guidance"))
def test_non_finite_input_names_the_argument_and_row(rng, name, mode, value):
    if name == "guidance" and mode == "plain":
        pytest.skip("no guidance in a plain step")
    args = step_args(rng, (5, 3000), torch.float32, guided=mode != "plain", rescale=0.5 if mode == "rescale" else 0.0,
                     threshold=0.9 if mode == "threshold" else 0.0)
    i = NAMES.index(name) if name in NAMES else {"coeffs": 7, "guidance": 8}[name]
    t = args[i].clone()
    t[3].view(-1)[-1 if name not in ("coeffs", "guidance") else 0] = value  # row 3, in the last block
    with pytest.raises(ValueError, match=rf"{name} contains (NaN or inf \(row 3\)|{'NaN' if value != value else 'inf'})"):
        run_native(with_tensor(args, name, t))


def test_the_first_bad_row_is_named(rng, num_threads):
    args = step_args(rng, (6, 40000), torch.float32, guided=False)
    h2 = args[4].clone()
    h2[4, 7] = float("nan")
    h2[2, 39999] = float("inf")
    noise = args[6].clone()
    noise[2, 5] = float("nan")
    for threads in (1, 2, 3):
        num_threads(threads)
        with pytest.raises(ValueError, match=r"h2 contains NaN or inf \(row 2\)"):
            run_native(with_tensor(with_tensor(args, "h2", h2), "noise", noise))


def test_unused_d_uncond_is_still_checked(rng):
    args = step_args(rng, (2, 100), torch.float64, present=("d_uncond",), guided=False)
    u = args[2].clone()
    u[1, 50] = float("nan")
    with pytest.raises(ValueError, match=r"d_uncond contains NaN or inf \(row 1\)"):
        run_native(with_tensor(args, "d_uncond", u))


def test_overflow_of_finite_inputs_is_no_error():
    big = torch.full((2, 10), 3e38)
    coeffs = torch.tensor([[1.0, 1.0, 0, 0, 0, 0]] * 2, dtype=torch.float64)
    args = (big, big, None, None, None, None, None, coeffs, None, 0.0, 0.0, 1.0)
    x_next, d = run_native(args)
    want = step_reference(*args)
    assert torch.equal(x_next, want[0]) and torch.isinf(x_next).all() and torch.equal(d, want[1])
    # d_uncond + w (d_cond - d_uncond) overflows inside the guidance: the thresholded row is NaN, as torch.quantile's
    g_args = (big, big, -big, None, None, None, None, coeffs, torch.tensor([0.0, 0.0], dtype=torch.float64), 0.0, 0.5,
              float("inf"))
    x_next, d = run_native(g_args)
    assert torch.isnan(d).all() and torch.isnan(step_reference(*g_args)[1]).all()


# ====================================================================== the binding's own checks

def test_binding_refuses_bad_shapes_and_dtypes():
    core = _native.core
    x = torch.zeros(2, 5).numpy()
    coeffs = torch.zeros(2, 6, dtype=torch.float64).numpy()
    out, d = torch.empty(2, 5).numpy(), torch.empty(2, 5).numpy()
    with pytest.raises(ValueError, match=r"h1: expected shape \[2, 5\]"):
        core.ode_step(x, x, None, torch.zeros(2, 4).numpy(), None, None, None, coeffs, None, 0.0, 0.0, 1.0, out, d, 1)
    with pytest.raises(ValueError, match="noise: expected dtype float32"):
        core.ode_step(x, x, None, None, None, None, torch.zeros(2, 5, dtype=torch.float64).numpy(), coeffs, None,
                      0.0, 0.0, 1.0, out, d, 1)
    with pytest.raises(ValueError, match=r"coeffs: expected shape \[2, 6\]"):
        core.ode_step(x, x, None, None, None, None, None, coeffs[:, :5], None, 0.0, 0.0, 1.0, out, d, 1)
    with pytest.raises(ValueError, match=r"guidance needs d_uncond"):
        core.ode_step(x, x, None, None, None, None, None, coeffs, torch.ones(2, dtype=torch.float64).numpy(), 0.0,
                      0.0, 1.0, out, d, 1)
    with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\)"):
        core.ode_step(x, x, None, None, None, None, None, coeffs, None, 0.0, 1.0, 1.0, out, d, 1)
    with pytest.raises(ValueError, match=r"x_next: expected 2 rows of 5 elements"):
        core.ode_step(x, x, None, None, None, None, None, coeffs, None, 0.0, 0.0, 1.0, out[:1], d, 1)
    with pytest.raises(ValueError, match="atol and rtol"):
        core.ode_error_norm(x, x, x, 0.0, 0.0, torch.empty(2).numpy(), 1)


# ====================================================================== error norm

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 1), (3,), (4, 0), (2, 3, 5), (5, 1003), (3, 70000)])
@pytest.mark.parametrize("tols", [(1e-3, 1e-3), (0.0, 1e-6), (1e-5, 0.0)])
def test_error_norm_matches_reference(rng, poisoned, dtype, shape, tols):
    err, y, y_new = randn(rng, *shape, dtype=dtype, scale=1e-3), randn(rng, *shape, dtype=dtype), randn(rng, *shape,
                                                                                                       dtype=dtype)
    got = ERROR_NORM(err, y, y_new, *tols)
    # the sum of M squares in double: up to M / 2 eps(float64) relative in the norm (one chain, portable kernel)
    m = err[0].numel() if shape[0] else 0
    rtol = ULPS * eps(dtype) + m * eps(torch.float64) / 2
    torch.testing.assert_close(got, error_norm_reference(err, y, y_new, *tols), rtol=rtol, atol=0)


@pytest.mark.parametrize("name", ["err", "y", "y_new"])
def test_error_norm_names_the_bad_input(rng, name):
    tensors = {n: randn(rng, 4, 500) for n in ("err", "y", "y_new")}
    tensors[name][2, 17] = float("inf")
    with pytest.raises(ValueError, match=rf"{name} contains NaN or inf \(row 2\)"):
        ERROR_NORM(tensors["err"], tensors["y"], tensors["y_new"], 1e-3, 1e-3)


def test_error_norm_zero_scale_is_no_error():
    zeros = torch.zeros(2, 3)
    err = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])  # 1 / 0 = inf, 0 / 0 = NaN
    got = ERROR_NORM(err, zeros, zeros, 0.0, 1e-3)
    want = error_norm_reference(err, zeros, zeros, 0.0, 1e-3)
    assert torch.isinf(got[0]) and torch.isnan(got[1]) and torch.isinf(want[0]) and torch.isnan(want[1])


# ====================================================================== CUDA

@cuda_only
@pytest.mark.parametrize("shape", [(1, 1), (3, 33), (2, 4, 64, 64), (1, 200000), (70, 5)])
@pytest.mark.parametrize("mode", ["plain", "guided", "both"])
def test_cuda_matches_reference(rng, shape, mode):
    args = step_args(rng, shape, torch.float32, guided=mode != "plain", rescale=0.7 if mode == "both" else 0.0,
                     threshold=0.995 if mode == "both" else 0.0, threshold_max=4.0, scale=2.0)
    cuda_args = tuple(a.cuda() if isinstance(a, torch.Tensor) else a for a in args)
    got = tuple(t.cpu() for t in STEP(*cuda_args))
    assert_step_close(got, step_reference(*args), args)
    err, y, y_new = (randn(rng, *shape) for _ in range(3))
    norm = ERROR_NORM(err.cuda(), y.cuda(), y_new.cuda(), 1e-4, 1e-3).cpu()
    torch.testing.assert_close(norm, error_norm_reference(err, y, y_new, 1e-4, 1e-3), rtol=1e-5, atol=0)


@cuda_only
def test_cuda_runs_on_the_callers_stream(rng):
    args = step_args(rng, (4, 3, 32, 32), torch.float32, threshold=0.9, rescale=0.5)
    cuda_args = tuple(a.cuda() if isinstance(a, torch.Tensor) else a for a in args)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        torch.cuda._sleep(10_000_000)  # the kernel must queue behind this on `stream`
        got = STEP(*cuda_args)
    stream.synchronize()
    assert_step_close(tuple(t.cpu() for t in got), step_reference(*args), args)


@cuda_only
def test_cuda_quantile_ties_and_nan_propagation():
    x = torch.tensor([[5.0] * 6 + [2.0] * 3 + [9.0], [1.5, -4.0, 4.0, 4.0, -7.0, 2.5, 3.0, 8.0, 4.0, -6.0]])
    coeffs = torch.tensor([[0.0, 1.0, 0, 0, 0, 0]] * 2, dtype=torch.float64)
    for q in (0.45, 0.5, 0.85, 0.95, 0.3):
        args = (x, x, None, None, None, None, None, coeffs, None, 0.0, q, float("inf"))
        got = STEP(*(a.cuda() if isinstance(a, torch.Tensor) else a for a in args))[1].cpu()
        torch.testing.assert_close(got, step_reference(*args)[1], rtol=1e-6, atol=0)
    bad = x.clone()
    bad[1, 3] = float("nan")
    args = (bad, bad, None, None, None, None, None, coeffs, None, 0.0, 0.5, float("inf"))
    got = STEP(*(a.cuda() if isinstance(a, torch.Tensor) else a for a in args))[1].cpu()
    assert torch.isnan(got[1]).all() and not torch.isnan(got[0]).any()
