// Row kernels of the fused step (csrc/ode/step.cpp drives them), one table
// per SIMD level and dtype. Each is one fused pass over a range of a row:
// every input is read once, every output written once, and the finiteness
// check is a "poison" (an OR of the bits of v * 0) over one output of that pass. The bodies
// are written once (ode/step_kernels.inc) over a lanes type; step.cpp builds
// the portable table from it, step_avx2.cpp and step_avx512.cpp the ISA ones.
#pragma once
#include <cstdint>

#include "gencore/config.h"

namespace gencore::ode {

// One sample's rows (offsets from the row start j are applied by the kernels).
template <typename T>
struct RowTerms {
  const T* x;
  const T* c;  // d_cond
  const T* u;  // d_uncond; null without guidance
  T w;         // guidance
  T cx, cd;    // coefficients of x and d
  int k;       // how many of h1, h2, h3, noise are present: h[0, k), in that order
  const T* h[4];
  T hc[4];
  T* d;
  T* x_next;
};

// Free room a bracket pass needs past n in its output (whole vectors are stored).
constexpr int64_t kBracketSlack = 16;

template <typename T>
struct StepRowOps {
  // On [j0, j1): d = c, or u + w (c - u); x_next = cx x + cd d + sum_i hc_i h_i (the
  // reference's order of additions). False when x_next is not finite there.
  bool (*plain)(const RowTerms<T>& r, int64_t j0, int64_t j1);
  // d alone on [j0, j1); false when d is not finite there. With sums (else null):
  // sums[0..1] += shifted sum and sum of squares of c, sums[2..3] of d, in double,
  // shifted by shifts[0] (c) and shifts[1] (d).
  bool (*guide)(const RowTerms<T>& r, int64_t j0, int64_t j1, const double* shifts, double* sums);
  // On [j0, j1): d = s d, then max(min(d, t), -t) / t unless t = 0, in place; x_next
  // as in plain. False when x_next is not finite there.
  bool (*finish)(const RowTerms<T>& r, int64_t j0, int64_t j1, T s, T t);
  // False when p[0, n) holds NaN or inf.
  bool (*finite)(const T* p, int64_t n);
  // The selection's bracket pass over x = |v[j]|, j < n (no NaN): counts x < a into
  // *below and stores the x in [a, b] to kept in order (kept has room for n +
  // kBracketSlack); returns how many it stored.
  int64_t (*bracket)(const T* v, int64_t n, T a, T b, T* kept, int64_t* below);
};

template <typename T>
StepRowOps<T> step_row_ops_portable();
StepRowOps<float> step_row_ops_f32_avx2();
StepRowOps<double> step_row_ops_f64_avx2();
StepRowOps<float> step_row_ops_f32_avx512();
StepRowOps<double> step_row_ops_f64_avx512();

}  // namespace gencore::ode
