"""GPTQ and AWQ import / export: against loop-by-loop packers written from the
formats' descriptions, round trips, act-order, bad checkpoints."""
from __future__ import annotations

import pytest
import torch

from gencore import quant


def to_int32(value: int) -> int:
    return value - 2 ** 32 if value >= 2 ** 31 else value


def gptq_by_loops(codes_kn, zeros_gn, bits, version):
    """GPTQ's packing element by element: code (k, n) at bits * (k % per) of qweight[k // per, n];
    zero (g, n) (minus one in v1) at bits * (n % per) of qzeros[g, n // per]."""
    per = 32 // bits
    k, n = codes_kn.shape
    g = zeros_gn.shape[0]
    qweight = [[0] * n for _ in range(k // per)]
    for kk in range(k):
        for nn in range(n):
            qweight[kk // per][nn] |= int(codes_kn[kk, nn]) << (bits * (kk % per))
    qzeros = [[0] * (n // per) for _ in range(g)]
    for gg in range(g):
        for nn in range(n):
            qzeros[gg][nn // per] |= (int(zeros_gn[gg, nn]) - (1 if version == 1 else 0)) << (bits * (nn % per))
    as_tensor = lambda rows: torch.tensor([[to_int32(v) for v in r] for r in rows], dtype=torch.int32)  # noqa: E731
    return as_tensor(qweight), as_tensor(qzeros)


def awq_by_loops(codes_kn, zeros_gn):
    """AWQ's packing: nibble i of word c holds column 8c + [0, 2, 4, 6, 1, 3, 5, 7][i]."""
    order = [0, 2, 4, 6, 1, 3, 5, 7]

    def pack(values):
        rows, cols = values.shape
        out = [[0] * (cols // 8) for _ in range(rows)]
        for r in range(rows):
            for c in range(cols // 8):
                for i in range(8):
                    out[r][c] |= int(values[r, 8 * c + order[i]]) << (4 * i)
        return torch.tensor([[to_int32(v) for v in row] for row in out], dtype=torch.int32)
    return pack(codes_kn), pack(zeros_gn)


def random_checkpoint(rng, n, k, bits, group, low_zero=0):
    g = -(-k // group)
    codes = torch.randint(0, 2 ** bits, (k, n), generator=rng)
    zeros = torch.randint(low_zero, 2 ** bits, (g, n), generator=rng)
    scales = (torch.rand(g, n, generator=rng) * 0.1 + 0.01).half()
    return codes, zeros, scales


def dequantized_kn(codes, zeros, scales, g_idx):
    return (codes.float() - zeros[g_idx].float()) * scales[g_idx].float()  # [K, N]


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("bits,group", [(4, 32), (4, 128), (8, 64)])
def test_from_gptq_reads_the_documented_layout(rng, bits, group, version):
    n, k = 16, 256
    codes, zeros, scales = random_checkpoint(rng, n, k, bits, group, low_zero=1 if version == 1 else 0)
    qweight, qzeros = gptq_by_loops(codes, zeros, bits, version)
    g_idx = (torch.arange(k) // group).to(torch.int32)
    qw = quant.from_gptq(qweight, qzeros, scales, g_idx, bits=bits, group_size=group, version=version)
    assert qw.shape == (n, k) and qw.perm is None
    assert torch.equal(quant.dequantize(qw), dequantized_kn(codes, zeros, scales, g_idx.long()).T)
    exported = quant.to_gptq(qw, version=version)
    assert torch.equal(exported["qweight"], qweight) and torch.equal(exported["qzeros"], qzeros)
    assert torch.equal(exported["scales"], scales) and torch.equal(exported["g_idx"], g_idx)


def test_gptq_act_order_becomes_a_permutation_and_round_trips(rng):
    n, k, group = 8, 128, 32
    codes, zeros, scales = random_checkpoint(rng, n, k, 4, group, low_zero=1)
    g_idx = (torch.arange(k) // group)[torch.randperm(k, generator=rng)].to(torch.int32)
    qweight, qzeros = gptq_by_loops(codes, zeros, 4, 1)
    qw = quant.from_gptq(qweight, qzeros, scales, g_idx, bits=4, group_size=group)
    assert qw.perm is not None
    w = dequantized_kn(codes, zeros, scales, g_idx.long()).T  # [N, K]
    assert torch.equal(quant.dequantize(qw), w)
    x = torch.randn(3, k, generator=rng)
    torch.testing.assert_close(quant.group_matmul(x, qw), x @ w.T, rtol=1e-5, atol=1e-5)
    layer = quant.QuantLinear.from_quantized(qw)
    torch.testing.assert_close(layer(x), x @ w.T, rtol=1e-5, atol=1e-5)
    exported = quant.to_gptq(qw)
    for name, want in (("qweight", qweight), ("qzeros", qzeros), ("scales", scales), ("g_idx", g_idx)):
        assert torch.equal(exported[name], want), name


def test_gptq_v1_zero_point_zero_reads_as_gptq_kernels_do_and_cannot_be_exported(rng):
    codes, zeros, scales = random_checkpoint(rng, 8, 64, 4, 32)
    stored = zeros.clamp(max=14)
    stored[0, 0] = 15  # a v1 checkpoint's stored "zero - 1" of 15: GPTQ's kernels add 1 without a mask
    qweight, qzeros = gptq_by_loops(codes, stored, 4, version=2)  # version 2 packs the stored values as given
    qw = quant.from_gptq(qweight, qzeros, scales, bits=4, group_size=32, version=1)
    assert torch.equal(qw.zeros, stored.T.float() + 1) and float(qw.zeros[0, 0]) == 16.0
    ours = quant.quantize(torch.randn(8, 64, generator=rng).abs(), 4, 32)  # min 0 in every group: zero point 0
    assert bool((ours.zeros == 0).all())
    with pytest.raises(ValueError, match="zero"):
        quant.to_gptq(ours, version=1)
    back = quant.to_gptq(ours.to(scale_dtype=torch.float16), version=2)
    again = quant.from_gptq(back["qweight"], back["qzeros"], back["scales"], back["g_idx"], 4, 32, version=2)
    assert torch.equal(quant.dequantize(again), quant.dequantize(ours.to(scale_dtype=torch.float16)))


@pytest.mark.parametrize("group", [32, 128])
def test_awq_reads_the_documented_nibble_order_and_round_trips(rng, group):
    n, k = 24, 256
    codes, zeros, scales = random_checkpoint(rng, n, k, 4, group)
    qweight, qzeros = awq_by_loops(codes, zeros)
    qw = quant.from_awq(qweight, qzeros, scales, group_size=group)
    g_idx = torch.arange(k) // group
    assert torch.equal(quant.dequantize(qw), dequantized_kn(codes, zeros, scales, g_idx).T)
    exported = quant.to_awq(qw)
    assert torch.equal(exported["qweight"], qweight) and torch.equal(exported["qzeros"], qzeros)
    assert torch.equal(exported["scales"], scales)


def test_quantized_weights_export_and_import_unchanged(rng):
    qw = quant.quantize(torch.randn(16, 96, generator=rng), 4, 32).to(scale_dtype=torch.float16)
    for export, load in ((lambda q: quant.to_awq(q), lambda d: quant.from_awq(d["qweight"], d["qzeros"], d["scales"], 32)),
                         (lambda q: quant.to_gptq(q, version=2),
                          lambda d: quant.from_gptq(d["qweight"], d["qzeros"], d["scales"], d["g_idx"], 4, 32, 2))):
        again = load(export(qw))
        assert torch.equal(again.data, qw.data) and torch.equal(again.zeros, qw.zeros.float())
        assert torch.equal(again.scales, qw.scales.float())


def test_bad_checkpoints_name_the_argument(rng):
    codes, zeros, scales = random_checkpoint(rng, 8, 64, 4, 32, low_zero=1)
    qweight, qzeros = gptq_by_loops(codes, zeros, 4, 1)
    before = [t.clone() for t in (qweight, qzeros, scales)]
    with pytest.raises(TypeError, match="qweight"):
        quant.from_gptq(qweight.long(), qzeros, scales, group_size=32)
    with pytest.raises(ValueError, match="qzeros"):
        quant.from_gptq(qweight, qzeros[:1], scales, group_size=32)
    with pytest.raises(ValueError, match="scales"):
        quant.from_gptq(qweight, qzeros, scales[:, :4], group_size=32)
    with pytest.raises(ValueError, match="g_idx"):
        quant.from_gptq(qweight, qzeros, scales, torch.zeros(64, dtype=torch.int32), group_size=32)
    with pytest.raises(ValueError, match="g_idx"):
        quant.from_gptq(qweight, qzeros, scales, torch.zeros(63, dtype=torch.int32), group_size=32)
    with pytest.raises(ValueError, match="bits"):
        quant.from_gptq(qweight, qzeros, scales, bits=3, group_size=32)
    with pytest.raises(ValueError, match="qzeros"):
        quant.from_awq(qweight.T.contiguous(), qzeros, scales, group_size=32)
    for t, b in zip((qweight, qzeros, scales), before):
        assert torch.equal(t, b)
    qw8 = quant.quantize(torch.randn(8, 64, generator=rng), 8, 32)
    with pytest.raises(ValueError, match="bits"):
        quant.to_awq(qw8)
    with pytest.raises(ValueError, match="out_features"):
        quant.to_awq(quant.quantize(torch.randn(6, 64, generator=rng), 4, 32))
    with pytest.raises(ValueError, match="in_features"):
        quant.to_gptq(quant.quantize(torch.randn(8, 60, generator=rng), 4, 32), version=2)
