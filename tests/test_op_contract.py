"""The contract every gencore op keeps, generated from the op registry.

Each op defined through ``gencore._op.Op`` brings ``samples`` (CPU argument
tuples: odd sizes, one element, empty, float32 and float64) and gets, by being
defined, the tests below: parity of the native CPU kernel with the reference
on poisoned outputs, non-contiguous inputs, bad input naming the argument,
NaN/inf refused on every CPU backend, caller data untouched, empty and meta
inputs, opcheck, torch.compile(fullgraph=True), and the eager fast path
giving exactly what the registered torch op gives.
"""
from __future__ import annotations

import pytest
import torch

import gencore
from gencore import _native, _native_call, _op

from tests.conftest import native_cpu_only, seed_for

OPS = sorted(_op.REGISTRY)


def op_samples(name: str) -> list[tuple]:
    op = _op.REGISTRY[name]
    return op.samples(torch.Generator().manual_seed(seed_for(name)))


def cases(filter_fn=lambda args: True):
    """(op name, sample index) over every op's samples."""
    out = []
    for name in OPS:
        for i, args in enumerate(op_samples(name)):
            if filter_fn(args):
                out.append(pytest.param(name, i, id=f"{name}-{i}"))
    return out


def floating_tensors(op, args):
    return [i for i in op.tensor_positions if isinstance(args[i], torch.Tensor) and args[i].is_floating_point()]


def as_tuple(outputs):
    return outputs if isinstance(outputs, tuple) else (outputs,)


def assert_outputs_close(actual, expected, args, what):
    exact_indices = all(a.dtype == torch.float64 for a in args if isinstance(a, torch.Tensor) and a.is_floating_point())
    for a, e in zip(as_tuple(actual), as_tuple(expected)):
        assert a.shape == e.shape and a.dtype == e.dtype, (what, a.shape, e.shape, a.dtype, e.dtype)
        if e.is_floating_point():
            scale = max(1.0, float(e.abs().max())) if e.numel() else 1.0
            tol = 1e-9 if e.dtype == torch.float64 else 2e-4
            torch.testing.assert_close(a, e, rtol=tol, atol=tol * scale, msg=what)
        elif exact_indices:  # float32 may order near-ties differently from the reference
            assert torch.equal(a, e), what


@pytest.fixture
def poisoned(monkeypatch):
    monkeypatch.setattr(_native_call, "POISON", True)


@pytest.fixture
def reference_backend(monkeypatch):
    monkeypatch.setenv("GENCORE_BACKEND", "reference")


def reference_outputs(op, args):
    return op.implementation("reference")(*args) if not op._empty(*args) else op._fake(*args)


# ---------------------------------------------------------------- parity and layouts

@native_cpu_only
@pytest.mark.parametrize("name,index", cases())
def test_native_matches_reference_on_poisoned_outputs(poisoned, name, index):
    op, args = _op.REGISTRY[name], op_samples(name)[index]
    assert op.backend(args) == "native-cpu"
    assert_outputs_close(op(*args), reference_outputs(op, args), args, f"{name} sample {index}")


def strided(t: torch.Tensor, kind: str) -> torch.Tensor:
    """The values of t in memory that is not contiguous: rows padded, or every other column."""
    if t.dim() == 0 or t.numel() == 0:
        return t
    if t.dim() == 1:
        out = torch.empty(2 * t.shape[0], dtype=t.dtype)[::2]
    elif kind == "padded-rows":  # the last dimension padded (the rows of a [B, ...] sample)
        out = torch.empty(*t.shape[:-1], t.shape[-1] + 3, dtype=t.dtype)[..., :t.shape[-1]]
    else:
        out = torch.empty(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)[..., ::2]
    out.copy_(t)
    return out


@pytest.mark.parametrize("kind", ["padded-rows", "strided-columns"])
@pytest.mark.parametrize("name,index", cases())
def test_non_contiguous_inputs_give_the_same_result(name, index, kind):
    op, args = _op.REGISTRY[name], op_samples(name)[index]
    strided_args = tuple(strided(a, kind) if i in op.tensor_positions and a is not None else a
                         for i, a in enumerate(args))
    assert_outputs_close(op(*strided_args), op(*args), args, f"{name} sample {index} {kind}")


@pytest.mark.parametrize("name,index", cases())
def test_inputs_are_untouched_and_outputs_do_not_alias_them(name, index):
    op, args = _op.REGISTRY[name], op_samples(name)[index]
    before = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    for backend_env in (None, "reference"):
        with pytest.MonkeyPatch.context() as mp:
            if backend_env:
                mp.setenv("GENCORE_BACKEND", backend_env)
            outputs = as_tuple(op(*args))
        for a, b in zip(args, before):
            if isinstance(a, torch.Tensor):
                assert torch.equal(a, b), f"{name} changed an input"
        inputs = {a.untyped_storage().data_ptr() for a in args if isinstance(a, torch.Tensor) and a.numel()}
        assert not any(o.numel() and o.untyped_storage().data_ptr() in inputs for o in outputs), name


@pytest.mark.parametrize("name,index", cases(lambda args: args[0].shape[0] > 0))
def test_cuda_glue_with_the_fake_cuda_module(monkeypatch, name, index):
    """The CUDA implementation of every op, its pointers, shapes, offsets and
    workspaces, against the reference: run on CPU tensors over tests/cuda_fake.py."""
    from tests.cuda_fake import FakeCuda

    op = _op.REGISTRY[name]
    if op._impls["native-cuda"] is None:
        pytest.skip(f"{name} has no CUDA implementation")
    monkeypatch.setattr(_native, "cuda", FakeCuda())
    monkeypatch.setattr(_native_call, "cuda_stream", lambda device: 0)
    monkeypatch.setattr(_native_call, "POISON", True)
    args = tuple(a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                 for a in op_samples(name)[index])
    assert_outputs_close(op.implementation("native-cuda")(*args), reference_outputs(op, args), args,
                         f"{name} sample {index} on the fake CUDA module")


# ---------------------------------------------------------------- bad input names the argument

def bad_variants(op, args):
    """(label, position, bad value, exception, text the message must contain)."""
    out = []
    for i in floating_tensors(op, args):
        name, t = op.arg_names[i], args[i]
        out.append(("int32", i, t.to(torch.int32), TypeError, name))
        out.append(("extra-dim", i, t.unsqueeze(0), ValueError, name))
        out.append(("list", i, t.tolist(), TypeError, name))
        if len(floating_tensors(op, args)) > 1:
            out.append(("meta-device", i, t.to("meta"), ValueError, name))
    return out


@pytest.mark.parametrize("name", OPS)
def test_bad_input_names_the_argument(name):
    op = _op.REGISTRY[name]
    args = op_samples(name)[0]
    for label, i, bad, exc, text in bad_variants(op, args):
        broken = tuple(bad if j == i else a for j, a in enumerate(args))
        with pytest.raises(exc, match=text):
            op(*broken)
        with pytest.raises(exc, match=text):  # the fake kernel checks the same way
            op._registered_fake(*broken)


@pytest.mark.parametrize("backend", ["native", "reference"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("name", OPS)
def test_non_finite_input_is_refused_on_cpu_naming_it(monkeypatch, name, value, backend):
    if backend == "reference":
        monkeypatch.setenv("GENCORE_BACKEND", "reference")
    elif _native.core is None:
        pytest.skip("no gencore._core: only the reference backend exists")
    op = _op.REGISTRY[name]
    args = op_samples(name)[0]
    for i in op.finite:
        if args[i] is None:  # an optional tensor the sample leaves out
            continue
        t = args[i].contiguous().clone()
        t.view(-1)[t.numel() // 2] = value
        broken = tuple(t if j == i else a for j, a in enumerate(args))
        with pytest.raises(ValueError, match=op.arg_names[i]):
            op(*broken)


@pytest.mark.parametrize("name", OPS)
def test_fast_path_and_registered_path_raise_the_same(name):
    op = _op.REGISTRY[name]
    args = op_samples(name)[0]
    i = op.finite[0]
    t = args[i].contiguous().clone()
    t.view(-1)[0] = float("nan")
    broken = tuple(t if j == i else a for j, a in enumerate(args))
    with pytest.raises(ValueError) as fast:
        op(*broken)
    with pytest.raises(ValueError) as registered:
        op.overload(*broken)
    assert str(fast.value) == str(registered.value)


# ---------------------------------------------------------------- empty, meta, fast path

@pytest.mark.parametrize("name,index", cases())
def test_outputs_have_the_fake_kernels_shapes(name, index):
    op, args = _op.REGISTRY[name], op_samples(name)[index]
    fake = as_tuple(op._fake(*args))
    for out, want in zip(as_tuple(op(*args)), fake):
        assert out.shape == want.shape and out.dtype == want.dtype and out.device == want.device


@pytest.mark.parametrize("name,index", cases())
def test_meta_tensors_give_shapes_only(name, index):
    op, args = _op.REGISTRY[name], op_samples(name)[index]
    meta_args = tuple(a.to("meta") if isinstance(a, torch.Tensor) else a for a in args)
    for out, want in zip(as_tuple(op(*meta_args)), as_tuple(op(*args))):
        assert out.device.type == "meta" and out.shape == want.shape and out.dtype == want.dtype


@pytest.mark.parametrize("name,index", cases())
def test_fast_path_equals_registered_path(name, index):
    op, args = _op.REGISTRY[name], op_samples(name)[index]
    assert op._eager(args), "plain CPU tensors without grad take the fast path"
    fast = as_tuple(op(*args))
    registered = as_tuple(op.overload(*args))
    for a, b in zip(fast, registered):
        assert a.dtype == b.dtype and torch.equal(a, b), name
    if op.differentiable:  # inputs that require grad take the registered path, same values
        for i in floating_tensors(op, args):  # one at a time: an op may refuse gradients for some
            grad_args = tuple(a.clone().requires_grad_() if j == i else a for j, a in enumerate(args))
            assert not op._eager(grad_args)
            try:
                outputs = as_tuple(op(*grad_args))
            except NotImplementedError as refusal:  # documented: "no gradient with respect to <name>"
                assert "no gradient" in str(refusal), (name, op.arg_names[i], str(refusal))
                continue
            for a, b in zip(outputs, fast):
                assert torch.equal(a.detach(), b), (name, op.arg_names[i])


def test_fast_path_is_off_while_tracing_or_transformed():
    op = _op.REGISTRY["ood.knn"]
    args = op_samples("ood.knn")[0]
    assert op._eager(args)
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        assert not op._eager(args)
    with torch.overrides.TorchFunctionMode():
        assert not op._eager(args)
    assert not op._eager((torch.nn.Parameter(args[0]), *args[1:]))
    with torch.no_grad():
        assert op._eager((args[0].clone().requires_grad_(), *args[1:]))


def test_first_call_does_not_import_dynamo():
    import subprocess
    import sys
    code = ("import sys, torch, gencore\n"
            "x = torch.randn(8, 16)\n"
            "gencore.ood.knn(x, torch.randn(50, 16), 3); gencore.ood.energy(x)\n"
            "print('torch._dynamo' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "False"


# ---------------------------------------------------------------- torch.library and torch.compile

def opcheck_cases():
    """The first two non-empty samples of each op (opcheck is slow)."""
    out = []
    for name in OPS:
        nonempty = [i for i, args in enumerate(op_samples(name)) if args[0].shape[0] > 0]
        out += [pytest.param(name, i, id=f"{name}-{i}") for i in nonempty[:2]]
    return out


@pytest.mark.parametrize("name,index", opcheck_cases())
def test_opcheck(name, index):
    op, args = _op.REGISTRY[name], op_samples(name)[index]
    torch.library.opcheck(op.custom_op, args)


@pytest.mark.parametrize("name", OPS)
def test_torch_compile_fullgraph_matches_eager(name):
    op = _op.REGISTRY[name]
    args = op_samples(name)[0]
    torch._dynamo.reset()
    compiled = torch.compile(lambda *a: op(*a), fullgraph=True, backend="aot_eager")
    assert_outputs_close(compiled(*args), op(*args), args, name)


def test_every_family_of_the_registry_is_public():
    for name in OPS:
        family = name.split(".")[0]
        assert family in gencore.__all__ and getattr(gencore, family) is not None, name
