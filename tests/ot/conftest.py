"""Fixtures of the ot tests."""
from __future__ import annotations

import pytest


@pytest.fixture
def fake_cuda_tiles(monkeypatch):
    """The streamed softmin's CUDA glue over tests/cuda_fake.py, 7 points of y a tile (so a few
    dozen points cross several tiles): returns the fake module, whose ``calls`` count kernels."""
    from gencore import _native, _native_call, _softmin

    from tests.cuda_fake import FakeCuda

    fake = FakeCuda()
    monkeypatch.setattr(_native, "cuda", fake)
    monkeypatch.setattr(_native_call, "cuda_stream", lambda device: 0)
    monkeypatch.setattr(_softmin, "_CUDA_TILE", 7)
    return fake
