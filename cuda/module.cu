// The _cuda extension: runtime queries here, each family's kernels bound in
// cuda/bindings/<family>.cu. Imports, and answers device_count() == 0, on a
// machine without a driver or a GPU.
#include <pybind11/pybind11.h>

#include <cuda_runtime.h>

#include <string>

namespace py = pybind11;

namespace gencore::gpu::bindings {
void bind_ood(py::module_& m);
}

namespace {

// The value of a runtime query, or 0 when it fails (no driver, no device). The
// error is cleared so it cannot surface later as the "last error" of an
// unrelated launch.
int query_or_zero(cudaError_t (*query)(int*)) {
  int v = 0;
  if (query(&v) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return v;
}

int device_count() { return query_or_zero(&cudaGetDeviceCount); }

// "80;90" (the GENCORE_CUDA_ARCHS spelling), from nvcc's list of the
// architectures this translation unit was compiled for (every .cu of the
// module is compiled with the same list).
std::string compiled_archs() {
#ifdef __CUDA_ARCH_LIST__
  constexpr int archs[] = {__CUDA_ARCH_LIST__};
  std::string out;
  for (int a : archs) {
    if (!out.empty()) out += ';';
    out += std::to_string(a / 10);
  }
  return out;
#else
  return "unknown";
#endif
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() =
      "gencore CUDA kernels. Pointers are Python ints (torch data_ptr()) to contiguous device\n"
      "memory; `stream` is torch.cuda.current_stream(dev).cuda_stream; `device` the device\n"
      "index. Kernels run on the caller's stream, never synchronise the host and never allocate:\n"
      "ops that need scratch take a caller-allocated workspace sized by <op>_workspace_bytes.";
  m.def("device_count", &device_count, "Visible CUDA devices; 0 without a driver or a GPU.");
  m.def("runtime_version", [] { return query_or_zero(&cudaRuntimeGetVersion); },
        "CUDA runtime version compiled in (statically linked), e.g. 13000.");
  m.def("driver_version", [] { return query_or_zero(&cudaDriverGetVersion); },
        "Version of the installed CUDA driver, e.g. 13000; 0 without a driver.");
  m.def("compiled_archs", &compiled_archs,
        "Architectures the module holds device code for, as a string in the GENCORE_CUDA_ARCHS\n"
        "spelling, e.g. '80;90'.");
  gencore::gpu::bindings::bind_ood(m);
}
