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

// Calls f(T{}) with T = float for a float32 array and T = double for float64,
// so each binding is written once as a template over T; any other dtype is a
// ValueError naming the argument. The one place bindings branch on dtype.
template <typename F>
decltype(auto) dispatch_floating(const py::array& a, const char* name, F&& f) {
  if (py::dtype::of<float>().is(a.dtype())) return f(float{});
  if (py::dtype::of<double>().is(a.dtype())) return f(double{});
  fail(name, ": expected dtype float32 or float64, got ", std::string(py::str(a.dtype())));
}

template <typename T>
void check_dtype(const py::array& a, const char* name) {
  GENCORE_CHECK(py::dtype::of<T>().is(a.dtype()), name, ": expected dtype ",
                std::string(py::str(py::dtype::of<T>())), ", got ", std::string(py::str(a.dtype())));
}

// A 2-D array with unit column stride, viewed without copying.
template <typename T>
MatrixView<const T> matrix_in(const py::array& a, const char* name) {
  GENCORE_CHECK(a.ndim() == 2, name, ": expected a 2-D array, got ", a.ndim(), "-D");
  check_dtype<T>(a, name);
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

// An array [B, ...] viewed without copying as B rows of prod(shape[1:])
// elements (a 1-D [B] array: rows of one element), so N-D tensors need no
// reshape on the Python side: dimensions after the first must be C-contiguous,
// the row stride is free.
template <typename T>
MatrixView<const T> rows_in(const py::array& a, const char* name) {
  GENCORE_CHECK(a.ndim() >= 1, name, ": expected an array of at least 1 dimension, got a 0-D one");
  check_dtype<T>(a, name);
  MatrixView<const T> v;
  v.data = static_cast<const T*>(a.data());
  v.rows = a.shape(0);
  v.cols = 1;
  for (py::ssize_t k = 1; k < a.ndim(); ++k) v.cols *= a.shape(k);
  const auto item = static_cast<py::ssize_t>(sizeof(T));
  const bool empty = v.rows == 0 || v.cols == 0;
  py::ssize_t expect = item;  // the C-contiguous stride of dimension k, from the last one in
  for (py::ssize_t k = a.ndim() - 1; k >= 1 && !empty; --k) {
    GENCORE_CHECK(a.shape(k) <= 1 || a.strides(k) == expect, name,
                  ": dimensions after the first must be C-contiguous");
    expect *= a.shape(k);
  }
  GENCORE_CHECK(empty || v.rows <= 1 || (a.strides(0) % item == 0 && a.strides(0) >= v.cols * item), name,
                ": unsupported row stride ", a.strides(0));
  v.row_stride = empty || v.rows <= 1 ? v.cols : a.strides(0) / item;
  if (v.row_stride < 1) v.row_stride = 1;
  return v;
}

// A 1-D array [n] with unit stride, viewed without copying. A [1, n] row is
// accepted too, so callers may keep 2-D shapes.
template <typename T>
const T* vector_in(const py::array& a, const char* name, py::ssize_t n) {
  const bool row = a.ndim() == 2 && a.shape(0) == 1;
  GENCORE_CHECK((a.ndim() == 1 || row) && a.shape(a.ndim() - 1) == n, name, ": expected shape [", n,
                "] (or [1, ", n, "])");
  check_dtype<T>(a, name);
  GENCORE_CHECK(n <= 1 || a.strides(a.ndim() - 1) == static_cast<py::ssize_t>(sizeof(T)), name,
                ": elements must be contiguous");
  return static_cast<const T*>(a.data());
}

template <typename T>
T* writeable_data(py::array& a, const char* name) {
  check_dtype<T>(a, name);
  GENCORE_CHECK(a.writeable() && (a.flags() & py::array::c_style), name,
                ": must be writeable and C-contiguous");
  return static_cast<T*>(a.mutable_data());
}

// A C-contiguous, writeable output [rows, cols].
template <typename T>
T* output(py::array& a, const char* name, py::ssize_t rows, py::ssize_t cols) {
  GENCORE_CHECK(a.ndim() == 2 && a.shape(0) == rows && a.shape(1) == cols, name,
                ": expected shape [", rows, ", ", cols, "]");
  return writeable_data<T>(a, name);
}

// A C-contiguous, writeable output [rows, ...] of rows x cols elements (cols =
// prod(shape[1:])), the output twin of rows_in.
template <typename T>
T* rows_out(py::array& a, const char* name, py::ssize_t rows, py::ssize_t cols) {
  py::ssize_t rest = 1;
  for (py::ssize_t k = 1; k < a.ndim(); ++k) rest *= a.shape(k);
  GENCORE_CHECK(a.ndim() >= 1 && a.shape(0) == rows && rest == cols, name, ": expected ", rows, " rows of ", cols,
                " elements");
  return writeable_data<T>(a, name);
}

// A C-contiguous, writeable output [n]; an [n, 1] column is accepted too.
template <typename T>
T* vector_out(py::array& a, const char* name, py::ssize_t n) {
  if (a.ndim() == 2) return output<T>(a, name, n, 1);
  GENCORE_CHECK(a.ndim() == 1 && a.shape(0) == n, name, ": expected shape [", n, "] (or [", n, ", 1])");
  return writeable_data<T>(a, name);
}

}  // namespace gencore::bindings
