// Non-owning row-major matrix view: pointer, shape, row stride (in elements).
// Columns are always unit-stride; the Python layer makes them so.
#pragma once
#include <cstdint>

#include "gencore/config.h"

namespace gencore {

template <typename T>
struct MatrixView {
  T* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t row_stride = 0;  // elements between consecutive rows

  T* row(int64_t r) const { return data + r * row_stride; }
};

}  // namespace gencore
