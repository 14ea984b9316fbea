// The _cuda extension: runtime queries here, each family's kernels bound in
// cuda/bindings/<family>.cu. Imports, and answers device_count() == 0 and
// has_kernel_image(d) == False, on a machine without a driver or a GPU.
#include <pybind11/pybind11.h>

#include <cuda_runtime.h>

#include <string>
#include <utility>

namespace py = pybind11;

namespace gencore::gpu::bindings {
void bind_ood(py::module_& m);
void bind_score(py::module_& m);
void bind_ode(py::module_& m);
void bind_ot(py::module_& m);
void bind_quant(py::module_& m);
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

bool valid_device(int device) { return device >= 0 && device < device_count(); }

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

// (major, minor), or (0, 0) for a device that does not exist. Reads device
// attributes only: creates no context.
std::pair<int, int> device_capability(int device) {
  if (!valid_device(device)) return {0, 0};
  int major = 0, minor = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess) {
    cudaGetLastError();
    return {0, 0};
  }
  return {major, minor};
}

// Never launched: its only use is asking the runtime whether this module holds
// device code (SASS for the device's architecture, or PTX the driver can JIT)
// that runs on a given device. Every .cu of the module is compiled for the same
// architectures, so this kernel answers for all of them.
__global__ void kernel_image_probe() {}

// False (never an exception) without a driver, for a device index that does
// not exist, and when the module has no image for the device (a build for
// "80;90" on a T4 or V100, or PTX newer than the driver). Makes `device`
// current for the query (cudaFuncGetAttributes loads the module there, as the
// first launch would) and restores the caller's device after; the query's
// error is cleared so it cannot surface later.
bool has_kernel_image(int device) {
  if (!valid_device(device)) return false;
  int previous = 0;
  if (cudaGetDevice(&previous) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  if (previous != device && cudaSetDevice(device) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  cudaFuncAttributes attributes{};
  const cudaError_t err = cudaFuncGetAttributes(&attributes, kernel_image_probe);
  if (previous != device) cudaSetDevice(previous);
  cudaGetLastError();
  return err == cudaSuccess;
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
  m.def("device_capability", &device_capability, py::arg("device"),
        "Compute capability (major, minor) of device `device`, e.g. (9, 0); (0, 0) when there is\n"
        "no such device (or no driver). Creates no CUDA context.");
  m.def("has_kernel_image", &has_kernel_image, py::arg("device"),
        "True when this build's kernels can run on device `device` (SASS for its architecture or\n"
        "PTX its driver can compile); False for a device the build has no image for (e.g. a build\n"
        "for '80;90' on a 7.x GPU), for a device index that does not exist, and without a driver or\n"
        "a GPU. Never raises; restores the current device and leaves no CUDA error behind.");
  gencore::gpu::bindings::bind_ood(m);
  gencore::gpu::bindings::bind_score(m);
  gencore::gpu::bindings::bind_ode(m);
  gencore::gpu::bindings::bind_ot(m);
  gencore::gpu::bindings::bind_quant(m);
}
