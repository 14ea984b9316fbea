// numpy <-> MatrixView glue shared by the family bindings. Only files in
// csrc/bindings/ see pybind11.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

#include "gencore/check.h"
#include "gencore/view.h"

namespace gencore::bindings {
namespace py = pybind11;

// A 2-D array with unit column stride, viewed without copying.
template <typename T>
MatrixView<const T> matrix_in(const py::array& a, const char* name) {
  GENCORE_CHECK(a.ndim() == 2, name, ": expected a 2-D array, got ", a.ndim(), "-D");
  GENCORE_CHECK(py::dtype::of<T>().is(a.dtype()), name, ": expected dtype ",
                std::string(py::str(py::dtype::of<T>())), ", got ", std::string(py::str(a.dtype())));
  const auto item = static_cast<py::ssize_t>(sizeof(T));
  // numpy gives empty arrays arbitrary strides (torch's [0, D] arrives as (0, 0)).
  const bool empty = a.shape(0) == 0 || a.shape(1) == 0;
  GENCORE_CHECK(empty || a.shape(1) <= 1 || a.strides(1) == item, name, ": columns must be contiguous");
  GENCORE_CHECK(empty || a.shape(0) <= 1 || (a.strides(0) % item == 0 && a.strides(0) >= a.shape(1) * item),
                name, ": unsupported row stride ", a.strides(0));
  MatrixView<const T> v;
  v.data = static_cast<const T*>(a.data());
  v.rows = a.shape(0);
  v.cols = a.shape(1);
  v.row_stride = empty || a.shape(0) <= 1 ? a.shape(1) : a.strides(0) / item;
  if (v.row_stride < 1) v.row_stride = 1;
  return v;
}

// A C-contiguous, writeable output with the given shape.
template <typename T>
T* output(py::array& a, const char* name, py::ssize_t rows, py::ssize_t cols) {
  GENCORE_CHECK(py::dtype::of<T>().is(a.dtype()), name, ": expected dtype ",
                std::string(py::str(py::dtype::of<T>())), ", got ", std::string(py::str(a.dtype())));
  GENCORE_CHECK(a.ndim() == 2 && a.shape(0) == rows && a.shape(1) == cols, name,
                ": expected shape [", rows, ", ", cols, "]");
  GENCORE_CHECK(a.writeable() && (a.flags() & py::array::c_style), name,
                ": must be writeable and C-contiguous");
  return static_cast<T*>(a.mutable_data());
}

}  // namespace gencore::bindings
