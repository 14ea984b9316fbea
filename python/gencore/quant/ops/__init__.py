"""quant torch ops, one module per op group (each registers its custom ops on import):
_quantize (quantize), _matmul (dequantize, group_matmul); _layout holds the shared checks."""
from ._matmul import DEQUANTIZE, GROUP_MATMUL
from ._quantize import QUANTIZE

__all__ = ["QUANTIZE", "DEQUANTIZE", "GROUP_MATMUL"]
