#include "gencore/blas.h"

#include <dlfcn.h>

#include <climits>

#include "gencore/check.h"

namespace gencore::blas {
namespace {

// Fortran ABI (LP64 integers, as SciPy's cython_blas declares them).
using sgemm_fn = void (*)(const char*, const char*, const int*, const int*, const int*, const float*,
                          const float*, const int*, const float*, const int*, const float*, float*,
                          const int*);
using dgemm_fn = void (*)(const char*, const char*, const int*, const int*, const int*, const double*,
                          const double*, const int*, const double*, const int*, const double*,
                          double*, const int*);
using set_threads_local_fn = int (*)(int);
using get_config_fn = char* (*)();

struct Blas {
  sgemm_fn sgemm = nullptr;
  dgemm_fn dgemm = nullptr;
  set_threads_local_fn set_threads_local = nullptr;
  std::string config;
};

Blas& state() {
  static Blas blas;
  return blas;
}

// Finds the shared object that holds `fn` and looks up an OpenBLAS symbol in it
// (SciPy's build prefixes some exported names with "scipy_").
void* sibling_symbol(void* fn, const char* name) {
  Dl_info info;
  if (!dladdr(fn, &info) || !info.dli_fname) return nullptr;
  void* handle = dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD);
  if (!handle) return nullptr;
  void* sym = dlsym(handle, name);
  dlclose(handle);  // RTLD_NOLOAD took a reference; the library stays loaded by SciPy
  return sym;
}

int checked_int(int64_t v, const char* what) {
  GENCORE_CHECK(v >= 0 && v <= INT_MAX, "BLAS dimension ", what, "=", v, " exceeds 32-bit range");
  return static_cast<int>(v);
}

}  // namespace

void set_gemm(void* sgemm, void* dgemm) {
  GENCORE_CHECK(sgemm && dgemm, "set_gemm: null BLAS pointer");
  Blas& b = state();
  b.sgemm = reinterpret_cast<sgemm_fn>(sgemm);
  b.dgemm = reinterpret_cast<dgemm_fn>(dgemm);
  b.set_threads_local = reinterpret_cast<set_threads_local_fn>(
      sibling_symbol(sgemm, "openblas_set_num_threads_local"));
  b.config.clear();
  for (const char* name : {"scipy_openblas_get_config", "openblas_get_config"}) {
    if (auto get_config = reinterpret_cast<get_config_fn>(sibling_symbol(sgemm, name))) {
      b.config = get_config();
      break;
    }
  }
  if (b.config.empty()) b.config = "unknown BLAS";
}

bool available() { return state().sgemm != nullptr; }

std::string describe() {
  const Blas& b = state();
  if (!b.sgemm) return "none";
  return b.config + (b.set_threads_local ? " (thread-local threads)" : " (global threads)");
}

namespace {

// Row-major c[m,n] = a[m,k]·b[n,k]^T is column-major c^T[n,m] = op(b)·op(a)
// with b transposed: gemm('T', 'N', n, m, k, alpha, b, ldb, a, lda, beta, c, ldc).
// Row-major c[m,n] = a[m,k]·b[k,n] is column-major c^T[n,m] = b^T·a^T with
// nothing transposed: gemm('N', 'N', n, m, k, alpha, b, ldb, a, lda, beta, c, ldc).
template <typename T, typename Gemm>
void gemm_row_major(Gemm gemm, const char* trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
                    int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  GENCORE_CHECK(gemm, "BLAS is not initialised (gencore._native sets it at import)");
  const int M = checked_int(n, "n"), N = checked_int(m, "m"), K = checked_int(k, "k");
  const int LDA = checked_int(ldb, "ldb"), LDB = checked_int(lda, "lda"), LDC = checked_int(ldc, "ldc");
  gemm(trans_b, "N", &M, &N, &K, &alpha, b, &LDA, a, &LDB, &beta, c, &LDC);
}

}  // namespace

// The four public overloads: (gemm_abt | gemm_ab) x (float | double).
#define GENCORE_ROW_MAJOR_GEMM(name, T, trans_b, fortran)                                                  \
  void name(int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda, const T* b, int64_t ldb, T beta, \
            T* c, int64_t ldc) {                                                                           \
    gemm_row_major(state().fortran, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);                \
  }
GENCORE_ROW_MAJOR_GEMM(gemm_abt, float, "T", sgemm)
GENCORE_ROW_MAJOR_GEMM(gemm_abt, double, "T", dgemm)
GENCORE_ROW_MAJOR_GEMM(gemm_ab, float, "N", sgemm)
GENCORE_ROW_MAJOR_GEMM(gemm_ab, double, "N", dgemm)
#undef GENCORE_ROW_MAJOR_GEMM

SingleThreadedScope::SingleThreadedScope() {
  if (auto set = state().set_threads_local) previous_ = set(1);
}

SingleThreadedScope::~SingleThreadedScope() {
  if (auto set = state().set_threads_local; set && previous_ > 0) set(previous_);
}

}  // namespace gencore::blas
