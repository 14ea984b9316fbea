// Group quantization of a float32 weight into the canonical packed layout
// (group_matmul.h; the formulas are those of python/gencore/quant/reference.py,
// reproduced bit for bit: float32 arithmetic, round to nearest even).
//   weight [N, K] -> data [N, ceil(K/2) or K] uint8, scales [N, G], zeros [N, G] float32
#pragma once
#include <cstdint>

#include "gencore/view.h"

namespace gencore::quant {

// clip_steps <= 1: round to nearest on the group's full range. clip_steps > 1:
// MSE-optimal clipping: the ranges shrunken by clip_ratio(i, clip_steps),
// i = 0 .. clip_steps - 1 (1 down to just above 0.5), are each tried and the one
// with the least squared weight error (summed in double, in k order; ties keep
// the wider range) is kept. Refuses (std::invalid_argument) NaN/inf weights,
// naming the row.
void quantize(MatrixView<const float> weight, int bits, int64_t group, bool symmetric, int clip_steps,
              uint8_t* data, int64_t data_stride, float* scales, float* zeros, int threads);

// The i-th range scale of the clipping search: float(1 - 0.5 i / steps).
float clip_ratio(int step, int steps);

}  // namespace gencore::quant
