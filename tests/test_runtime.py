"""Runtime layer: info(), threads, SIMD levels, backend selection, the CLI, _cuda."""
from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import torch

import gencore
from gencore import _dispatch, _native, _op
from gencore._checks import FLOATING

from tests.conftest import SIMD_LEVELS, native_cpu_only, supported_simd_levels

INFO_KEYS = {"version", "modules", "module_errors", "simd", "threads", "openmp", "blas", "cuda",
             "forced_backend", "check_finite", "backends", "ops"}


def _subprocess(args, env_overrides=None, timeout=120):
    env = dict(os.environ)
    env.pop("GENCORE_BACKEND", None)
    env.pop("GENCORE_SIMD", None)
    env.update(env_overrides or {})
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


# ---------------------------------------------------------------- info()

def test_info_keys_and_types():
    info = gencore.info()
    assert INFO_KEYS <= set(info), f"missing keys: {INFO_KEYS - set(info)}"
    assert info["version"] == gencore.__version__
    assert set(info["modules"]) == {"_core", "_cuda"}
    assert all(isinstance(v, bool) for v in info["modules"].values())
    assert info["modules"]["_core"] is (_native.core is not None)
    assert info["modules"]["_cuda"] is (_native.cuda is not None)
    assert isinstance(info["module_errors"], dict)
    for name, present in info["modules"].items():
        # a missing module says why; a present one reports no error
        assert (name in info["module_errors"]) is (not present)
        if not present:
            assert isinstance(info["module_errors"][name], str) and info["module_errors"][name]
    assert isinstance(info["threads"], int) and info["threads"] >= 1
    assert isinstance(info["openmp"], bool)
    assert set(info["simd"]) >= {"detected", "in_use", "avx512_bf16", "avx512_vnni", "avx_vnni"}
    assert all(isinstance(info["simd"][e], bool) for e in ("avx512_bf16", "avx512_vnni", "avx_vnni"))
    assert set(info["cuda"]) >= {"built", "devices", "runtime_version", "driver_version", "archs"}
    assert isinstance(info["cuda"]["devices"], int) and info["cuda"]["devices"] >= 0
    assert info["cuda"]["built"] is (_native.cuda is not None)
    assert info["forced_backend"] in (None, os.environ.get("GENCORE_BACKEND"))


@native_cpu_only
def test_info_native_cpu_fields():
    info = gencore.info()
    assert info["simd"]["detected"] in SIMD_LEVELS
    assert info["simd"]["in_use"] in supported_simd_levels()
    assert isinstance(info["blas"], str) and info["blas"]
    try:
        import scipy
        blas_name = scipy.show_config(mode="dicts")["Build Dependencies"]["blas"]["name"]
    except Exception:  # older SciPy without mode="dicts": the str check above stands
        blas_name = ""
    if "openblas" in blas_name.lower():
        assert "openblas" in info["blas"].lower(), info["blas"]
    for extension in ("avx512_bf16", "avx512_vnni"):
        if info["simd"][extension]:
            assert info["simd"]["detected"] == "avx512", extension
    # AVX-VNNI: the level of a CPU with it and without AVX-512, or an extra of an AVX-512 one
    assert (info["simd"]["detected"] == "avxvnni") == (info["simd"]["avx_vnni"] and info["simd"]["detected"] != "avx512")
    # "gcc 12.2.0" / "clang 14.0.6 ...": the compiler that built _core
    assert info["compiler"].split()[0] in ("gcc", "clang") and len(info["compiler"].split()) >= 2, info["compiler"]


@native_cpu_only
def test_full_width_avx512_is_said_of_amd_family_1ah_and_later():
    # the 512-bit quant kernels are taken only there (csrc/include/gencore/simd.h); read the CPU's
    # vendor and family independently, from /proc/cpuinfo
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        pytest.skip("no /proc/cpuinfo on this system to read the CPU's vendor and family from")
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    amd_zen5 = fields.get("vendor_id") == "AuthenticAMD" and int(fields.get("cpu family", "0")) >= 0x1A
    info = gencore.info()["simd"]
    assert info["avx512_full_width"] == (amd_zen5 and info["detected"] == "avx512")


def test_info_cuda_devices():
    devices = gencore.info()["cuda"]["devices"]
    if not torch.cuda.is_available():
        assert devices == 0
    elif _native.cuda is not None:
        assert devices == torch.cuda.device_count()
    else:
        assert devices == 0  # no _cuda module: gencore sees no device it can use


def test_info_backends_per_family():
    backends = gencore.info()["backends"]
    assert set(backends) == {name.split(".")[0] for name in _op.REGISTRY}
    assert "ood" in backends
    for family, per_device in backends.items():
        assert set(per_device) == {"cpu", "cuda"}
        assert per_device["cpu"] == ("native-cpu" if _native.core is not None else "reference")
        cuda_native = _native.cuda is not None and _native.cuda_device_count() > 0
        assert per_device["cuda"] == ("native-cuda" if cuda_native else "reference")


# ---------------------------------------------------------------- threads

def test_num_threads_default_is_torch_setting(monkeypatch):
    monkeypatch.setattr(_native, "_num_threads", None)
    assert gencore.get_num_threads() == torch.get_num_threads()
    assert gencore.info()["threads"] == torch.get_num_threads()


@pytest.mark.parametrize("n", [1, 2, 3, 17])
def test_set_num_threads_roundtrip(n):
    torch_threads = torch.get_num_threads()
    gencore.set_num_threads(n)
    assert gencore.get_num_threads() == n
    assert gencore.info()["threads"] == n
    assert torch.get_num_threads() == torch_threads, "gencore must not change torch's settings"


@pytest.mark.parametrize("bad", [0, -1, 1.5, 2.0, True, False, "2", None])
def test_set_num_threads_rejects_bad_values(bad):
    before = gencore.get_num_threads()
    with pytest.raises(ValueError, match="num_threads"):
        gencore.set_num_threads(bad)
    assert gencore.get_num_threads() == before


# ---------------------------------------------------------------- SIMD

@native_cpu_only
@pytest.mark.parametrize("bad", ["sse", "AVX2", "", "avx-512", None, 2])
def test_set_simd_level_rejects_bad_names(bad):
    before = _native.core.simd_level()
    with pytest.raises(ValueError, match="level"):
        gencore.set_simd_level(bad)
    assert _native.core.simd_level() == before


@native_cpu_only
@pytest.mark.parametrize("wanted", SIMD_LEVELS)
def test_set_simd_level_clamps_to_cpu(wanted):
    detected = _native.core.detected_simd_level()
    expected = SIMD_LEVELS[min(SIMD_LEVELS.index(wanted), SIMD_LEVELS.index(detected))]
    if expected == "avxvnni" and not _native.core.has_avx_vnni():
        expected = "avx2"  # an AVX-512 CPU without AVX-VNNI
    assert gencore.set_simd_level(wanted) == expected
    assert _native.core.simd_level() == expected
    assert gencore.info()["simd"]["in_use"] == expected
    assert gencore.info()["simd"]["detected"] == detected


@native_cpu_only
def test_simd_level_fixture_restores(simd_level):
    assert _native.core.simd_level() == simd_level


@native_cpu_only
def test_simd_env_caps_level_at_import():
    proc = _subprocess(["-c", "import gencore; print(gencore.info()['simd']['in_use'])"],
                       {"GENCORE_SIMD": "scalar"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "scalar"


@native_cpu_only
def test_simd_env_bad_value_raises_at_import():
    proc = _subprocess(["-c", "import gencore"], {"GENCORE_SIMD": "sse9"})
    assert proc.returncode != 0
    assert "ValueError" in proc.stderr and "GENCORE_SIMD" in proc.stderr, proc.stderr


# ---------------------------------------------------------------- backend selection

def backend_of(device_type: str, dtype=torch.float32, **kw) -> str:
    """The backend an op with native kernels for every float dtype would get (no warning)."""
    device = torch.device(device_type, 0) if device_type == "cuda" else torch.device(device_type)
    return _dispatch.choose(device, dtype, cpu_dtypes=FLOATING, cuda_dtypes=FLOATING, **kw)[0]


def test_backend_forced_reference(reference_backend):
    assert backend_of("cpu") == "reference"
    assert backend_of("cuda") == "reference"
    info = gencore.info()
    assert info["forced_backend"] == "reference"
    assert all(b == {"cpu": "reference", "cuda": "reference"} for b in info["backends"].values())
    assert all(backend == "reference" for table in info["ops"].values() for row in table.values()
               for backend in row.values())


@pytest.mark.parametrize("value", ["", "auto", "native", "AUTO", " reference "])
def test_backend_accepted_values(monkeypatch, value):
    monkeypatch.setenv("GENCORE_BACKEND", value)
    forced = value.strip().lower() == "reference"
    expected = "reference" if forced or _native.core is None else "native-cpu"
    assert backend_of("cpu") == expected


@pytest.mark.parametrize("value", ["cuda", "ref", "native-cpu", "1"])
def test_backend_bad_value_raises(monkeypatch, value):
    monkeypatch.setenv("GENCORE_BACKEND", value)
    with pytest.raises(ValueError, match="GENCORE_BACKEND"):
        backend_of("cpu")
    with pytest.raises(ValueError, match="GENCORE_BACKEND"):
        gencore.ood.knn(torch.zeros(2, 3), torch.zeros(4, 3), 1)


@pytest.mark.parametrize("device_type", ["meta", "xla", "mps"])
def test_backend_other_devices_use_reference(device_type):
    assert backend_of(device_type) == "reference"


def test_info_ops_table_covers_every_op_device_and_dtype():
    ops = gencore.info()["ops"]
    assert set(ops) == set(_op.REGISTRY) and "ood.knn" in ops
    for name, table in ops.items():
        op = _op.REGISTRY[name]
        assert set(table) == {"cpu", "cuda"}
        for device, row in table.items():
            assert set(row) == {"float16", "bfloat16", "float32", "float64"}
            for dtype_name, backend in row.items():
                dtype = getattr(torch, dtype_name)
                native = dtype in (op.cpu_dtypes if device == "cpu" else op.cuda_dtypes)
                want = backend_of(device, dtype) if native else "reference"
                assert backend == want, (name, device, dtype_name)


class _FakeCuda:
    """A _cuda module that sees one device of compute capability 7.5 and has no image for it."""

    @staticmethod
    def device_count():
        return 1

    @staticmethod
    def has_kernel_image(device):
        return False

    @staticmethod
    def device_capability(device):
        return (7, 5)

    @staticmethod
    def compiled_archs():
        return "80;90"


def test_cuda_without_kernel_image_falls_back_naming_the_capability(monkeypatch):
    monkeypatch.setattr(_native, "cuda", _FakeCuda())
    monkeypatch.setattr(_native, "_cuda_devices", None)
    monkeypatch.setattr(_native, "_kernel_images", {})
    backend, reason = _dispatch.choose(torch.device("cuda", 0), torch.float32, cpu_dtypes=FLOATING,
                                       cuda_dtypes=FLOATING)
    assert backend == "reference"
    assert "7.5" in reason and "sm_80" in reason and "GENCORE_CUDA_ARCHS" in reason


def test_cuda_dtype_and_limit_fallbacks_give_reasons(monkeypatch):
    fake = _FakeCuda()
    fake.has_kernel_image = lambda device: True
    monkeypatch.setattr(_native, "cuda", fake)
    monkeypatch.setattr(_native, "_cuda_devices", None)
    monkeypatch.setattr(_native, "_kernel_images", {})
    cuda0 = torch.device("cuda", 0)
    assert _dispatch.choose(cuda0, torch.float32, cpu_dtypes=FLOATING, cuda_dtypes=FLOATING) == ("native-cuda", None)
    backend, reason = _dispatch.choose(cuda0, torch.float64, cpu_dtypes=FLOATING, cuda_dtypes=(torch.float32,))
    assert backend == "reference" and "float64" in reason
    backend, reason = _dispatch.choose(cuda0, torch.float32, cpu_dtypes=FLOATING, cuda_dtypes=FLOATING,
                                       cuda_limit=lambda: "k=5000 exceeds the limit")
    assert backend == "reference" and reason == "k=5000 exceeds the limit"
    backend, reason = _dispatch.choose(torch.device("cuda", 3), torch.float32, cpu_dtypes=FLOATING,
                                       cuda_dtypes=FLOATING)
    assert backend == "reference" and "device 3" in reason


def test_fallback_warns_once_per_reason(monkeypatch):
    monkeypatch.setattr(_dispatch, "_warned", set())
    with pytest.warns(RuntimeWarning, match="gencore.ood.knn: reason A; running the pure-torch reference"):
        _dispatch.warn_fallback("ood.knn", "cuda", "reason A")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _dispatch.warn_fallback("ood.knn", "cuda", "reason A")
    with pytest.warns(RuntimeWarning, match="reason B"):
        _dispatch.warn_fallback("ood.knn", "cuda", "reason B")


@native_cpu_only
def test_fallback_warns_once(monkeypatch):
    # Pretend the CPU module failed to load: the reference runs, and says so once.
    monkeypatch.setattr(_native, "core", None)
    monkeypatch.setattr(_native, "core_error", "simulated: gencore._core not built")
    monkeypatch.setattr(_dispatch, "_warned", set())
    x, y = torch.randn(3, 4), torch.randn(9, 4)
    with pytest.warns(RuntimeWarning, match="reference") as record:
        values, indices = gencore.ood.knn(x, y, 2)
    assert any("simulated" in str(w.message) for w in record)
    ref_values, ref_indices = gencore.ood.reference.knn(x, y, 2)
    assert torch.equal(values, ref_values) and torch.equal(indices, ref_indices)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gencore.ood.knn(x, y, 2)  # the second call is quiet


def test_forced_reference_does_not_warn(reference_backend, monkeypatch):
    monkeypatch.setattr(_dispatch, "_warned", set())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gencore.ood.knn(torch.randn(3, 4), torch.randn(9, 4), 2)


# ---------------------------------------------------------------- _cuda

def test_cuda_module_absent_or_importable():
    if _native.cuda is None:
        assert isinstance(_native.cuda_error, str) and _native.cuda_error
        assert _native.cuda_device_count() == 0
        assert backend_of("cuda") == "reference"
        return
    count = _native.cuda.device_count()
    assert isinstance(count, int) and count >= 0
    if not torch.cuda.is_available():
        assert count == 0
    else:
        assert count == torch.cuda.device_count()
    assert isinstance(_native.cuda.knn_max_k(), int) and _native.cuda.knn_max_k() >= 1
    assert _native.cuda_archs() and all(a.startswith("sm_") for a in _native.cuda_archs())
    for device in range(count):
        major, minor = _native.cuda.device_capability(device)
        assert (major, minor) == torch.cuda.get_device_capability(device)
        assert isinstance(_native.cuda.has_kernel_image(device), bool)
    # a device that does not exist: an answer, never an exception (also without a GPU)
    assert _native.cuda.has_kernel_image(count) is False
    assert _native.cuda.device_capability(count) == (0, 0)


# ---------------------------------------------------------------- CLI

def test_cli_info_prints_version():
    proc = _subprocess(["-m", "gencore", "info"])
    assert proc.returncode == 0, proc.stderr
    assert gencore.__version__ in proc.stdout


# ---------------------------------------------------------------- finiteness policy

def test_check_finite_modes(monkeypatch):
    from gencore import _op
    monkeypatch.setattr(_op, "_finite_mode", None)
    assert _op.check_finite_mode() == "auto" and gencore.info()["check_finite"] == "auto"
    monkeypatch.setenv("GENCORE_CHECK_FINITE", "always")
    assert _op.check_finite_mode() == "always"
    monkeypatch.setenv("GENCORE_CHECK_FINITE", "sometimes")
    with pytest.raises(ValueError, match="GENCORE_CHECK_FINITE"):
        _op.check_finite_mode()
    gencore.set_check_finite("auto")  # the setting wins over the environment
    assert _op.check_finite_mode() == "auto"
    with pytest.raises(ValueError, match="mode"):
        gencore.set_check_finite("never")
    with pytest.raises(TypeError, match="mode"):
        gencore.set_check_finite(True)
