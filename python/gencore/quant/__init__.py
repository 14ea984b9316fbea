"""Group-quantized weights: int4 / int8 with a scale and zero point per group of
K, fused dequantize-matmul kernels, QuantLinear.

Public names:
    quantize(weight, bits=4, group_size=128, symmetric=False) -> QuantizedWeight
    dequantize(qw, dtype=torch.float32) -> [N, K]
    group_matmul(x, qw, bias=None) -> [..., N]  (y = x @ dequant(W)^T + bias)
    pack(codes, bits) / unpack(data, bits, in_features): the int4 packing (low nibble first)
    QuantizedWeight: the plain-tensor container (data, scales, zeros, bits, group_size, shape)
    QuantLinear.from_linear(linear, bits=4, group_size=128): an nn.Linear with a quantized weight
    quantize_model(model, bits=4, group_size=128, symmetric=False, skip=None): replaces nn.Linear layers
    from_gptq / to_gptq (qweight, qzeros, scales, g_idx; act-order; v1 and v2 zeros),
    from_awq / to_awq (packed along N, nibble order 0 2 4 6 1 3 5 7),
    from_tinygemm / to_tinygemm (torchao's affine int4: int32 codes, [G, N, 2] scales and float zeros):
    see gencore.quant.formats
    outlier_permutation(activations): the DGQ-style channel order for int8 activations (quantize(..., perm=))
    reference: the pure-torch specification (and the format's description)
"""
from . import reference
from .calibrate import outlier_permutation
from .formats import from_awq, from_gptq, from_tinygemm, to_awq, to_gptq, to_tinygemm
from .functions import dequantize, group_matmul, pack, quantize, unpack
from .modules import QuantLinear, quantize_model
from .weight import QuantizedWeight

__all__ = ["quantize", "dequantize", "group_matmul", "pack", "unpack", "QuantizedWeight", "QuantLinear", "quantize_model",
           "from_gptq", "to_gptq", "from_awq", "to_awq", "from_tinygemm", "to_tinygemm",
           "outlier_permutation", "reference"]
