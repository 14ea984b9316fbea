// Group quantization of a float32 weight into the canonical packed layout
// (group_matmul.h; the formulas are those of python/gencore/quant/reference.py,
// reproduced bit for bit: float32 arithmetic, round to nearest even).
//   weight [N, K] -> data [N, ceil(K/2) or K] uint8, scales [N, G], zeros [N, G] float32
#pragma once
#include <cstdint>

#include "gencore/view.h"

namespace gencore::quant {

// Refuses (std::invalid_argument) NaN/inf weights, naming the row.
void quantize(MatrixView<const float> weight, int bits, int64_t group, bool symmetric, uint8_t* data,
              int64_t data_stride, float* scales, float* zeros, int threads);

}  // namespace gencore::quant
