"""The op kit: one definition per op, and everything an op needs comes from it.

An op is defined once::

    KNN = Op("ood.knn", "(Tensor queries, Tensor bank, int k, str metric) -> (Tensor, Tensor)",
             check=check_knn, fake=knn_shapes, reference=knn_reference,
             cpu=knn_cpu, cuda=knn_cuda, finite=("queries", "bank"), ...)

and called as ``KNN(queries, bank, k, metric)`` (every argument positional;
the public function holds the defaults and the docstring). From the one
definition come:

* the ``torch.library`` custom op ``gencore::ood_knn`` with its fake kernel
  (shapes only, for meta tensors and ``torch.compile``) and, given
  ``backward``, its autograd formula;
* argument checking: ``check`` runs before torch's schema could cast or
  refuse an argument with a less helpful message, and inside the fake kernel;
  it looks at metadata only (types, shapes, dtypes, devices, scalars), never
  at values, so it traces;
* the backend choice (``gencore._dispatch``) from device, dtype, the dtypes
  each backend runs natively, the CUDA kernel's limits and the compiled CUDA
  architectures, with a one-time warning naming the reason for a fallback;
* one finiteness policy (below), and data-dependent checks (``check_values``)
  run by the same rule;
* the empty-input short cut: when ``empty(*args)`` holds, the outputs are the
  fake kernel's (real, empty tensors) and no kernel runs;
* the op's rows in ``gencore.info()["ops"]`` (device x dtype -> backend);
* an eager fast path: when nothing traces or transforms the call (no
  torch.compile/export, no fake or functional tensors, no dispatch or function
  modes, no vmap/grad transforms), the chosen implementation is called
  directly when no input requires grad, and through an autograd.Function made
  of the same setup_context and backward when one does. Both give exactly the
  results, gradients and errors of the registered path and skip its ~60 us of
  Python dispatch; the first call does not import ``torch._dynamo`` (~2 s).

Finiteness policy, the same for every op: inputs named in ``finite`` must be
finite. On the CPU (native kernel or reference) NaN/inf raise ValueError
naming the argument; native CPU kernels fold the check into their first pass
over the data (``cpu_kernel_checks`` names what they check themselves), the
kit checks the rest. On CUDA nothing is checked by default, because a check
is a host synchronisation: non-finite inputs propagate to the outputs they
touch. ``gencore.set_check_finite("always")`` (or ``GENCORE_CHECK_FINITE=always``)
checks on CUDA too, at one host sync per checked tensor.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Optional, Sequence

import torch

from . import _checks, _dispatch, _native
from ._dispatch import NATIVE_CPU, NATIVE_CUDA, REFERENCE

__all__ = ["Op", "REGISTRY", "set_check_finite", "check_finite_mode"]

FLOAT16_32 = (torch.float16, torch.bfloat16, torch.float32)

#: Every op defined through the kit, by name ("ood.knn").
REGISTRY: dict[str, "Op"] = {}

_FINITE_MODES = ("auto", "always")
_finite_mode: Optional[str] = None


def check_finite_mode() -> str:
    """'auto' (refuse NaN/inf on CPU only) or 'always' (on CUDA too, with host syncs)."""
    if _finite_mode is not None:
        return _finite_mode
    value = (_native.env("GENCORE_CHECK_FINITE") or "auto").strip().lower() or "auto"
    if value not in _FINITE_MODES:
        raise ValueError(f"GENCORE_CHECK_FINITE must be one of {_FINITE_MODES}, got {value!r}")
    return value


def set_check_finite(mode: str) -> None:
    """Where ops refuse NaN/inf inputs: "auto" (default: on the CPU, for free or one
    pass; not on CUDA, where a check costs a host synchronisation, so non-finite
    values propagate) or "always" (on CUDA too, one host sync per checked tensor)."""
    global _finite_mode
    _finite_mode = _checks.choice(mode, "mode", _FINITE_MODES)


def checks_values_of(t: torch.Tensor) -> bool:
    """Whether code outside an op (a public function's own data-dependent checks)
    should look at ``t``'s values: not while tracing, and on CUDA only in "always"
    mode, by the same finiteness policy as the ops."""
    return not torch.compiler.is_compiling() and (not t.is_cuda or check_finite_mode() == "always")


_PLAIN, _AUTOGRAD = "plain", "autograd"


def _eager_function(op: "Op", backward: Callable, setup_context: Optional[Callable]):
    """The op's autograd formula as a torch.autograd.Function for eager calls that need
    gradients: the same forward (op.run), setup_context and backward as the registered
    op's, without torch.library's dispatch (about 60 us a call, twice in training)."""

    class Function(torch.autograd.Function):
        # The classic form (forward takes ctx): torch binds the arguments of a function that
        # has a separate setup_context with inspect.signature on every apply (~25 us).
        @staticmethod
        def forward(ctx, *args):
            output = op.run(args)
            outputs = output if isinstance(output, tuple) else (output,)
            integral = [o for o in outputs if not o.is_floating_point()]
            if integral:
                ctx.mark_non_differentiable(*integral)
            if setup_context is not None:
                setup_context(ctx, args, output)
            return output

        @staticmethod
        def backward(ctx, *grads):
            return backward(ctx, *grads)

    Function.__name__ = Function.__qualname__ = op.torch_name.replace("gencore::", "") + "_function"
    return Function


def _tracing_or_transformed() -> bool:
    # torch.compiler.is_compiling() is a plain flag (and a constant True while
    # dynamo traces), so it goes first: the C queries below would graph-break.
    if torch.compiler.is_compiling():
        return True
    C = torch._C
    return bool(C._len_torch_function_stack() or C._len_torch_dispatch_stack()
                or C._are_functorch_transforms_active())


class Op:
    """One gencore op: see the module docstring.

    Args:
        name: "<family>.<op>" (registered as ``gencore::<family>_<op>``).
        schema: the torch schema without the name, no defaults:
            "(Tensor x, float t) -> Tensor".
        check: (*args) -> args, the metadata checks; returns the arguments
            normalised (e.g. numpy integers as int). Raises TypeError/ValueError
            naming the argument.
        fake: (*args) -> outputs allocated with ``new_empty`` on the inputs'
            device: shapes and dtypes only.
        reference, cpu, cuda: (*args) -> outputs, for each backend (cpu/cuda
            None: no native kernel on that device). They run where autograd
            records nothing (below the registered op's autograd, or eagerly
            without grad), so torch code needs no detach; ``.numpy()`` does
            (``_native_call`` takes care of it).
        cpu_dtypes, cuda_dtypes: dtypes of the anchor tensor each native
            backend takes (fp16/bf16 usually convert to float32 in the glue).
        anchor: position of the tensor whose device and dtype choose the backend.
        finite: tensor arguments that must be finite (see the policy).
        cpu_kernel_checks: of those, the ones the native CPU kernel refuses itself.
        check_values: (backend, *args) -> None, data-dependent checks, run on
            the CPU, and on CUDA only in "always" mode.
        cuda_limit: (*args) -> None or the reason the CUDA kernel cannot take
            this call (the reference runs, with a warning).
        empty: (*args) -> bool, True when the outputs are empty.
        backward, setup_context: the autograd formula (torch.library.register_autograd).
        samples: (generator) -> list of argument tuples, CPU tensors: the inputs the
            contract tests (tests/test_op_contract.py) run every op on.
    """

    def __init__(self, name: str, schema: str, *, check: Callable, fake: Callable, reference: Callable,
                 cpu: Optional[Callable] = None, cuda: Optional[Callable] = None,
                 cpu_dtypes: Iterable[torch.dtype] = _checks.FLOATING,
                 cuda_dtypes: Iterable[torch.dtype] = FLOAT16_32, anchor: int = 0,
                 finite: Sequence[str] = (), cpu_kernel_checks: Sequence[str] = (),
                 check_values: Optional[Callable] = None, cuda_limit: Optional[Callable] = None,
                 empty: Optional[Callable] = None, backward: Optional[Callable] = None,
                 setup_context: Optional[Callable] = None, samples: Optional[Callable] = None):
        if name in REGISTRY:
            raise ValueError(f"op {name!r} is defined twice")
        self.name = name
        self.torch_name = "gencore::" + name.replace(".", "_")
        parsed = torch._C.parse_schema(self.torch_name + schema)
        self.arg_names = tuple(a.name for a in parsed.arguments)
        self.tensor_positions = tuple(i for i, a in enumerate(parsed.arguments)
                                      if str(a.type) in ("Tensor", "Optional[Tensor]"))
        unknown = [n for n in (*finite, *cpu_kernel_checks) if n not in self.arg_names]
        if unknown:
            raise ValueError(f"{name}: finite/cpu_kernel_checks name unknown arguments {unknown}")
        self._check, self._fake, self._check_values = check, fake, check_values
        self._impls = {REFERENCE: reference, NATIVE_CPU: cpu, NATIVE_CUDA: cuda}
        self.cpu_dtypes = tuple(cpu_dtypes) if cpu is not None else ()
        self.cuda_dtypes = tuple(cuda_dtypes) if cuda is not None else ()
        self.anchor = anchor
        self.finite = tuple(self.arg_names.index(n) for n in finite)
        self._finite_after_cpu_kernel = tuple(self.arg_names.index(n) for n in finite
                                              if n not in cpu_kernel_checks)
        self._cuda_limit, self._empty, self.samples = cuda_limit, empty, samples
        self.differentiable = backward is not None

        self.custom_op = torch.library.custom_op(self.torch_name, self._registered_impl, mutates_args=(),
                                                 schema=schema)
        self.custom_op.register_fake(self._registered_fake)
        self._function = None
        if backward is not None:
            self.custom_op.register_autograd(backward, setup_context=setup_context)
            self._function = _eager_function(self, backward, setup_context)
        self.overload = self.custom_op._opoverload
        REGISTRY[name] = self

    # --- calling --------------------------------------------------------------------

    def __call__(self, *args: Any):
        """Runs the op on every argument, positionally (see the module docstring)."""
        return self.trusted(*self._check(*args))

    def trusted(self, *args: Any):
        """The op on arguments its caller has already checked (another op's backward formula,
        a solver loop): no argument checks, the same paths as ``__call__`` otherwise."""
        path = self._fast_path(args)
        if path is _PLAIN:
            return self.run(args)
        if path is _AUTOGRAD:
            return self._function.apply(*args)
        return self.overload(*args)

    def _fast_path(self, args: tuple):
        """_PLAIN (no grad needed), _AUTOGRAD (eager autograd.Function), or None (the registered op)."""
        if _tracing_or_transformed():
            return None
        grad = torch.is_grad_enabled()
        needs_grad = False
        for i in self.tensor_positions:
            t = args[i]
            if t is None:
                continue
            if type(t) not in _checks.PLAIN_TENSOR_TYPES or not (t.is_cpu or t.is_cuda):
                return None
            needs_grad = needs_grad or (grad and t.requires_grad)
        if not needs_grad:
            return _PLAIN
        return _AUTOGRAD if self._function is not None else None

    def eager_autograd(self, args: tuple) -> bool:
        """Whether a call with ``args`` would run eagerly and record a gradient: nothing
        traces or transforms it, and a tensor argument requires grad. A public function
        may then take a faster eager route of its own (see score's dsm_loss)."""
        return self._fast_path(args) is _AUTOGRAD

    def _eager(self, args: tuple) -> bool:
        """Whether the call runs the implementation directly (no autograd needed)."""
        return self._fast_path(args) is _PLAIN

    def _registered_impl(self, *args):
        outputs = self.run(self._check(*args))
        return outputs

    def _registered_fake(self, *args):
        return self._fake(*self._check(*args))

    def backend(self, args: tuple, *, warn: bool = True) -> str:
        """The backend a call with ``args`` (checked) runs on."""
        t = args[self.anchor]
        if t.is_cpu and t.dtype in self.cpu_dtypes and _native.core is not None and not _dispatch.forced_reference():
            return NATIVE_CPU  # the common case, decided without building a torch.device
        limit = None
        if self._cuda_limit is not None and t.device.type == "cuda":
            limit = lambda: self._cuda_limit(*args)  # noqa: E731 - asked only once a CUDA kernel is possible
        backend, reason = _dispatch.choose(t.device, t.dtype, cpu_dtypes=self.cpu_dtypes,
                                           cuda_dtypes=self.cuda_dtypes, cuda_limit=limit)
        if reason is not None and warn:
            _dispatch.warn_fallback(self.name, t.device.type, reason)
        return backend

    def run(self, args: tuple):
        """Checked arguments -> outputs: backend choice, finiteness policy, empty short cut, kernel."""
        backend = self.backend(args)
        empty = self._empty is not None and self._empty(*args)
        self._refuse_bad_values(backend, args, everything=empty)
        if empty:
            return self._fake(*args)
        outputs = self._impls[backend](*args)
        if backend == REFERENCE:  # the reference may return views; outputs never alias inputs
            outputs = self._unaliased(outputs, args)
        return outputs

    def implementation(self, backend: str) -> Callable:
        """The raw implementation of ``backend`` (tests run the CUDA glue with a fake module)."""
        fn = self._impls[backend]
        if fn is None:
            raise ValueError(f"{self.name} has no {backend} implementation")
        return fn

    # --- policy ------------------------------------------------------------------------

    def _refuse_bad_values(self, backend: str, args: tuple, everything: bool) -> None:
        if args[self.anchor].is_cuda and check_finite_mode() != "always":
            return
        positions = self.finite if backend != NATIVE_CPU or everything else self._finite_after_cpu_kernel
        for i in positions:
            if args[i] is not None:
                _checks.finite(args[i], self.arg_names[i])
        if self._check_values is not None:
            self._check_values(backend, *args)

    @staticmethod
    def _unaliased(outputs, args):
        storages = {a.untyped_storage().data_ptr() for a in args if isinstance(a, torch.Tensor) and a.numel()}
        if not storages:
            return outputs

        def fresh(t):
            return t.clone() if t.numel() and t.untyped_storage().data_ptr() in storages else t
        if isinstance(outputs, tuple):
            return tuple(fresh(t) for t in outputs)
        return fresh(outputs)

    # --- gencore.info() ------------------------------------------------------------------

    def backend_table(self) -> dict[str, dict[str, str]]:
        """device -> dtype -> backend for this op (per-call limits aside), without warnings."""
        table = {}
        for device in (torch.device("cpu"), torch.device("cuda", 0)):
            row = {}
            for dtype in _checks.FLOATING:
                backend, _ = _dispatch.choose(device, dtype, cpu_dtypes=self.cpu_dtypes,
                                              cuda_dtypes=self.cuda_dtypes)
                row[str(dtype).replace("torch.", "")] = backend
            table[device.type] = row
        return table

    def __repr__(self) -> str:
        return f"<gencore op {self.name} ({self.torch_name})>"
