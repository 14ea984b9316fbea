"""numpy, CuPy and DLPack inputs (gencore._arrays): zero-copy in, the caller's kind out."""
from __future__ import annotations

import importlib.util
import sys
import types

import numpy as np
import pytest
import torch

import gencore
from gencore import _arrays


def randn(rng, *shape, dtype=torch.float32):
    return torch.randn(*shape, generator=rng, dtype=dtype)


def test_numpy_in_numpy_out_same_values(rng):
    x, y = randn(rng, 9, 5), randn(rng, 40, 5)
    values, indices = gencore.ood.knn(x.numpy(), y.numpy(), 3)
    assert isinstance(values, np.ndarray) and isinstance(indices, np.ndarray)
    want = gencore.ood.knn(x, y, 3)
    np.testing.assert_array_equal(values, want[0].numpy())
    np.testing.assert_array_equal(indices, want[1].numpy())
    logits = randn(rng, 7, 4, dtype=torch.float64)
    got = gencore.ood.energy(logits.numpy(), 2.0)
    assert isinstance(got, np.ndarray) and got.dtype == np.float64
    np.testing.assert_array_equal(got, gencore.ood.energy(logits, 2.0).numpy())


def test_numpy_scalars_are_numbers(rng):
    x, y = randn(rng, 4, 3), randn(rng, 12, 3)
    values, _ = gencore.ood.knn(x, y, np.int64(3))
    assert values.shape == (4, 3)
    torch.testing.assert_close(gencore.ood.msp(x, np.float32(2.0)), gencore.ood.msp(x, 2.0))
    with pytest.raises(TypeError, match="k must be an int"):
        gencore.ood.knn(x, y, np.float64(3.0))


def test_inputs_are_shared_not_copied():
    captured = {}

    @_arrays.accepts_arrays
    def probe(a, b):
        captured["a"], captured["b"] = a, b
        return a + b

    a, b = np.ones((3, 2), np.float32), np.arange(6, dtype=np.float32).reshape(3, 2)
    out = probe(a, b)
    assert captured["a"].data_ptr() == a.ctypes.data and captured["b"].data_ptr() == b.ctypes.data
    assert isinstance(out, np.ndarray)
    np.testing.assert_array_equal(out, a + b)


def test_read_only_and_negative_stride_arrays(rng):
    x = randn(rng, 6, 4).numpy()
    y = randn(rng, 20, 4).numpy()
    y.setflags(write=False)
    values, _ = gencore.ood.knn(x[::-1], y, 2)  # x[::-1] has a negative row stride: copied
    want, _ = gencore.ood.knn(torch.from_numpy(x[::-1].copy()), torch.from_numpy(y.copy()), 2)
    np.testing.assert_array_equal(values, want.numpy())
    assert not y.flags.writeable


def test_mixed_kinds_are_refused_naming_both(rng):
    x, y = randn(rng, 4, 3), randn(rng, 12, 3)
    with pytest.raises(TypeError, match="queries is a numpy.ndarray but bank is a torch.Tensor"):
        gencore.ood.knn(x.numpy(), y, 2)
    with pytest.raises(TypeError, match="bank"):
        gencore.ood.knn(x, y.numpy(), 2)


def test_unsupported_numpy_dtype_names_the_argument():
    with pytest.raises(TypeError, match="logits"):
        gencore.ood.energy(np.array([["a", "b"]], dtype=object))


class _DLPackArray:
    """A minimal foreign array: DLPack out, and its module's from_dlpack back in."""

    def __init__(self, tensor):
        self._t = tensor

    def __dlpack__(self, stream=None, **kwargs):
        return self._t.__dlpack__()

    def __dlpack_device__(self):
        return self._t.__dlpack_device__()


def _foreign_module():
    module = types.ModuleType("fake_array_lib")
    module.from_dlpack = lambda obj: _DLPackArray(torch.from_dlpack(obj))
    _DLPackArray.__module__ = module.__name__
    sys.modules[module.__name__] = module
    return module


def test_dlpack_objects_round_trip(rng):
    _foreign_module()
    x, y = randn(rng, 5, 6), randn(rng, 30, 6)
    values, indices = gencore.ood.knn(_DLPackArray(x), _DLPackArray(y), 4)
    assert isinstance(values, _DLPackArray) and isinstance(indices, _DLPackArray)
    want = gencore.ood.knn(x, y, 4)
    assert torch.equal(torch.from_dlpack(values), want[0]) and torch.equal(torch.from_dlpack(indices), want[1])


def test_dlpack_object_without_a_way_back_is_refused(rng):
    class Orphan(_DLPackArray):
        pass

    Orphan.__module__ = "no_such_module_anywhere"
    with pytest.raises(TypeError, match="from_dlpack"):
        gencore.ood.energy(Orphan(randn(rng, 3, 3)))


def test_torch_inputs_pass_through_untouched(rng):
    x = randn(rng, 4, 4)
    assert isinstance(gencore.ood.energy(x), torch.Tensor)


_cupy_ready = importlib.util.find_spec("cupy") is not None and torch.cuda.is_available()


@pytest.mark.skipif(not _cupy_ready, reason="needs CuPy (pip install 'gencore[cupy]') and a CUDA device")
def test_cupy_in_cupy_out_on_cupys_stream(rng):
    import cupy

    x, y = randn(rng, 50, 8), randn(rng, 400, 8)
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        cx, cy = cupy.asarray(x.numpy()), cupy.asarray(y.numpy())
        values, indices = gencore.ood.knn(cx, cy, 5)
        assert isinstance(values, cupy.ndarray) and values.device.id == cx.device.id
    stream.synchronize()
    want = gencore.ood.knn(x.cuda(), y.cuda(), 5)
    np.testing.assert_array_equal(cupy.asnumpy(indices), want[1].cpu().numpy())


def test_detectors_take_numpy_and_return_numpy(rng):
    from gencore.ood import KNNDetector, MahalanobisDetector

    x = randn(rng, 200, 6).numpy()
    labels = (torch.arange(200) % 3).numpy()
    det = MahalanobisDetector().fit(x, labels)
    scores = det.score(x[:10])
    assert isinstance(scores, np.ndarray) and scores.shape == (10,)
    torch.testing.assert_close(torch.from_numpy(scores), det.score(torch.from_numpy(x[:10])))
    assert isinstance(det.nearest_class(x[:4]), np.ndarray)
    knn = KNNDetector(k=3).fit(x)
    assert isinstance(knn.ood_score(x[:5]), np.ndarray)
    with pytest.raises(TypeError, match="features is a numpy.ndarray"):
        det.score(x[:3], logits=torch.zeros(3, 2))
