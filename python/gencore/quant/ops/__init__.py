"""quant torch ops, one module per op group (each registers its custom ops on import):
_quantize (quantize), _matmul (dequantize, group_matmul, group_matmul_int8); _layout holds the shared checks."""
from ._matmul import DEQUANTIZE, GROUP_MATMUL, GROUP_MATMUL_INT8
from ._quantize import QUANTIZE

__all__ = ["QUANTIZE", "DEQUANTIZE", "GROUP_MATMUL", "GROUP_MATMUL_INT8"]
