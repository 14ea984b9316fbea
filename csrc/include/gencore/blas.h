// Access to the BLAS that SciPy ships. gencore does not link a BLAS: at import
// the Python layer hands over the Fortran-ABI sgemm/dgemm pointers held in
// scipy.linalg.cython_blas.__pyx_capi__ capsules.
#pragma once
#include <cstdint>
#include <string>

#include "gencore/config.h"

namespace gencore::blas {

// Registers the Fortran sgemm/dgemm entry points (from SciPy's capsules).
void set_gemm(void* sgemm, void* dgemm);
bool available();
std::string describe();  // e.g. "OpenBLAS 0.3.30 ... (thread-local threads)"

// Row-major: c[m, n] = alpha * a[m, k] · b[n, k]^T + beta * c, on the calling
// thread only (see SingleThreadedScope).
void gemm_abt(int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
              const float* b, int64_t ldb, float beta, float* c, int64_t ldc);
void gemm_abt(int64_t m, int64_t n, int64_t k, double alpha, const double* a, int64_t lda,
              const double* b, int64_t ldb, double beta, double* c, int64_t ldc);

// Row-major: c[m, n] = alpha * a[m, k] · b[k, n] + beta * c, on the calling thread only.
void gemm_ab(int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
             const float* b, int64_t ldb, float beta, float* c, int64_t ldc);
void gemm_ab(int64_t m, int64_t n, int64_t k, double alpha, const double* a, int64_t lda,
             const double* b, int64_t ldb, double beta, double* c, int64_t ldc);

// gencore parallelises over tiles itself, so each calling thread asks OpenBLAS
// for one thread (thread-locally, via openblas_set_num_threads_local where the
// library has it) and restores the previous value on exit. Without that symbol
// the BLAS runs with its own setting. Movable, so a parallel_for's per-thread
// state can hold one (it is made and destroyed on its own thread).
class SingleThreadedScope {
 public:
  SingleThreadedScope();
  ~SingleThreadedScope();
  SingleThreadedScope(SingleThreadedScope&& other) noexcept : previous_(other.previous_) {
    other.previous_ = -1;
  }
  SingleThreadedScope(const SingleThreadedScope&) = delete;
  SingleThreadedScope& operator=(const SingleThreadedScope&) = delete;
  SingleThreadedScope& operator=(SingleThreadedScope&&) = delete;

 private:
  int previous_ = -1;
};

}  // namespace gencore::blas
