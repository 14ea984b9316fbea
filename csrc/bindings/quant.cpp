// Bindings of the quant family's CPU kernels: group_matmul and dequantize over
// the packed layout of csrc/quant/group_matmul.h. Shapes are checked here,
// arrays viewed without copying, the GIL released around the kernel.
#include <vector>

#include "bindings/arrays.h"
#include "gencore/check.h"
#include "quant/activation_planes.h"
#include "quant/group_matmul.h"
#include "quant/group_matmul_planes.h"
#include "quant/quantize.h"

namespace gencore::bindings {

namespace {

// data [N, ceil(K/2)] or [N, K] uint8, scales / zeros [N, G] float32
quant::PackedWeight packed_weight(const py::array& data, const py::array& scales, const py::array& zeros, int bits,
                                  int64_t group, int64_t K) {
  GENCORE_CHECK(bits == 4 || bits == 8, "bits must be 4 or 8, got ", bits);
  GENCORE_CHECK(group >= 1 && K >= 0, "group_size must be >= 1 and K >= 0");
  const auto q = matrix_in<uint8_t>(data, "data");
  const auto s = matrix_in<float>(scales, "scales");
  const auto z = matrix_in<float>(zeros, "zeros");
  const int64_t bytes = bits == 4 ? (K + 1) / 2 : K;
  const int64_t groups = K == 0 ? 0 : (K + group - 1) / group;
  GENCORE_CHECK(q.cols == bytes, "data: expected ", bytes, " bytes per row for K=", K, " at ", bits, " bits, got ",
                q.cols);
  GENCORE_CHECK(s.rows == q.rows && s.cols == groups, "scales: expected shape [", q.rows, ", ", groups, "]");
  GENCORE_CHECK(z.rows == q.rows && z.cols == groups, "zeros: expected shape [", q.rows, ", ", groups, "]");
  GENCORE_CHECK(s.row_stride == z.row_stride || q.rows <= 1, "scales and zeros must have the same row stride");
  quant::PackedWeight w;
  w.data = q.data;
  w.data_stride = q.row_stride;
  w.scales = s.data;
  w.zeros = z.data;
  w.scale_stride = s.row_stride;
  w.rows = q.rows;
  w.cols = K;
  w.bits = bits;
  w.group = group;
  return w;
}

// x [M, K] float32, bias [N] float32 or None -> out [M, N] float32
void group_matmul(const py::array& x, const py::array& data, const py::array& scales, const py::array& zeros,
                  const py::object& bias, int bits, int64_t group, int64_t K, py::array& out, int threads,
                  bool int8_activations) {
  const auto w = packed_weight(data, scales, zeros, bits, group, K);
  const auto a = matrix_in<float>(x, "x");
  GENCORE_CHECK(a.cols == K, "x: expected ", K, " columns, got ", a.cols);
  const float* b = bias.is_none() ? nullptr : vector_in<float>(bias.cast<py::array>(), "bias", w.rows);
  float* y = output<float>(out, "out", a.rows, w.rows);
  py::gil_scoped_release release;
  if (int8_activations)
    quant::group_matmul_int8_activations(a, w, b, y, threads);
  else
    quant::group_matmul(a, w, b, y, threads);
}

// -> out [N, K] float32
void dequantize(const py::array& data, const py::array& scales, const py::array& zeros, int bits, int64_t group,
                int64_t K, py::array& out, int threads) {
  const auto w = packed_weight(data, scales, zeros, bits, group, K);
  float* o = output<float>(out, "out", w.rows, K);
  py::gil_scoped_release release;
  quant::dequantize(w, o, K, threads);
}

// weight [N, K] float32 -> data [N, bytes] uint8, scales / zeros [N, G] float32
void quantize(const py::array& weight, int bits, int64_t group, bool symmetric, int clip_steps, py::array& data,
              py::array& scales, py::array& zeros, int threads) {
  GENCORE_CHECK(bits == 4 || bits == 8, "bits must be 4 or 8, got ", bits);
  GENCORE_CHECK(group >= 1, "group_size must be >= 1, got ", group);
  const auto w = matrix_in<float>(weight, "weight");
  const int64_t bytes = bits == 4 ? (w.cols + 1) / 2 : w.cols;
  const int64_t groups = w.cols == 0 ? 0 : (w.cols + group - 1) / group;
  uint8_t* q = output<uint8_t>(data, "data", w.rows, bytes);
  float* s = output<float>(scales, "scales", w.rows, groups);
  float* z = output<float>(zeros, "zeros", w.rows, groups);
  py::gil_scoped_release release;
  quant::quantize(w, bits, group, symmetric, clip_steps, q, bytes, s, z, threads);
}

// Test hook: x [K] float32 (finite) -> planes [P, K] int8 (the kernels' layout), sx and xz [G],
// by the SIMD level in use (csrc/quant/activation_planes.h).
void activation_planes(const py::array& x, int bits, int64_t group, int planes, py::array& codes, py::array& sx,
                       py::array& xz) {
  GENCORE_CHECK(bits == 4 || bits == 8, "bits must be 4 or 8, got ", bits);
  GENCORE_CHECK(planes == 1 || planes == quant::kMaxPlanes, "planes must be 1 or ", quant::kMaxPlanes);
  const auto row = matrix_in<float>(x, "x");
  GENCORE_CHECK(row.rows == 1 && group >= 1, "x: expected one row and group_size >= 1");
  const int64_t K = row.cols, G = (K + group - 1) / group;
  int8_t* dst = output<int8_t>(codes, "codes", planes, K);
  float* scales = output<float>(sx, "sx", 1, G);
  float* sums = output<float>(xz, "xz", 1, G);
  std::vector<int32_t> scratch(static_cast<size_t>(K));
  quant::activation_row_quantizer()(row.row(0), quant::activation_row_shape(K, group, planes, bits), scratch.data(),
                                    dst, scales, sums);
}

}  // namespace

void bind_quant(py::module_& m) {
  m.def("group_matmul", &group_matmul, py::arg("x"), py::arg("data"), py::arg("scales"), py::arg("zeros"),
        py::arg("bias"), py::arg("bits"), py::arg("group_size"), py::arg("in_features"), py::arg("out"),
        py::arg("threads"), py::arg("int8_activations") = false,
        "y [M, N] = x [M, K] . dequant(W [N, K])^T (+ bias), float32 (csrc/quant/group_matmul.h); with\n"
        "int8_activations, x quantized per row and group to int8 first (csrc/quant/group_matmul_planes.h)");
  m.def("quant_dequantize", &dequantize, py::arg("data"), py::arg("scales"), py::arg("zeros"), py::arg("bits"),
        py::arg("group_size"), py::arg("in_features"), py::arg("out"), py::arg("threads"),
        "out [N, K] = dequant(W), float32");
  m.def("quant_quantize", &quantize, py::arg("weight"), py::arg("bits"), py::arg("group_size"),
        py::arg("symmetric"), py::arg("clip_steps"), py::arg("data"), py::arg("scales"), py::arg("zeros"), py::arg("threads"),
        "Group quantization into the canonical packed layout (csrc/quant/quantize.h); clip_steps > 1:\n"
        "MSE-optimal clipping over that many shrunken ranges.");
  m.def("last_group_matmul_path", [] { return std::string(quant::last_group_matmul_path()); },
        "The path the calling thread's last group_matmul took: 'rows' or 'blas'.");
  m.def("quant_row_kernel", [] { return std::string(quant::plane_row_kernel_name()); },
        "The integer row kernel group_matmul's few-row paths run at the SIMD level in use: 'portable', 'avx2', "
        "'avxvnni' or 'avx512vnni'.");
  m.def("_test_activation_planes", &activation_planes, py::arg("x"), py::arg("bits"), py::arg("group_size"),
        py::arg("planes"), py::arg("codes"), py::arg("sx"), py::arg("xz"),
        "Test hook: one activation row [1, K] quantized into the integer paths' planes [P, K], sx and xz [1, G].");
  m.def("group_matmul_blas_min_rows", &quant::group_matmul_blas_min_rows, py::arg("bits"),
        "The fewest activation rows for which group_matmul takes the BLAS path (bits-bit weights, SIMD level in use).");
}

}  // namespace gencore::bindings
