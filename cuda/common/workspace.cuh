// Caller-provided scratch memory. Kernels never allocate: an op that needs
// scratch has a host function <op>_workspace_bytes(sizes...) and takes
// (workspace, workspace_bytes). The Python layer allocates it as a torch uint8
// tensor on the caller's device, so it comes from torch's caching allocator
// (reuses its cache, shows in torch.cuda.memory_*) and, being used only by
// kernels on the caller's stream, is ordered with them like any other tensor.
//
// One WorkspaceLayout describes the arrays of an op's workspace; the op builds
// the same layout to answer <op>_workspace_bytes and to carve the workspace,
// so the two can never disagree.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "common/check.cuh"
#include "common/launch.cuh"

namespace gencore::gpu {

// Every array starts on this boundary (float4 / int64 access), and so must the
// workspace itself; torch's allocations are 512-byte aligned.
constexpr int64_t kWorkspaceAlign = 16;

class WorkspaceLayout {
 public:
  // Reserves `count` elements of T at the next aligned offset; returns that offset.
  template <typename T>
  int64_t reserve(int64_t count) {
    const int64_t offset = round_up(bytes_, kWorkspaceAlign);
    bytes_ = offset + count * int64_t(sizeof(T));
    return offset;
  }
  int64_t bytes() const { return bytes_; }

 private:
  int64_t bytes_ = 0;
};

// A workspace checked against its layout: std::invalid_argument naming `op`
// when it is smaller than layout.bytes(), or (for a non-empty layout) null or
// not kWorkspaceAlign-aligned.
class Workspace {
 public:
  Workspace(const char* op, void* ptr, int64_t bytes, const WorkspaceLayout& layout)
      : base_(static_cast<char*>(ptr)) {
    const int64_t need = layout.bytes();
    if (bytes < need)
      fail_argument(op, "workspace too small: " + std::to_string(bytes) + " bytes, need " +
                            std::to_string(need) + " (see " + op + "_workspace_bytes)");
    if (need > 0 && ptr == nullptr) fail_argument(op, "workspace pointer is null");
    if (need > 0 && reinterpret_cast<std::uintptr_t>(ptr) % kWorkspaceAlign != 0)
      fail_argument(op, "workspace must be " + std::to_string(kWorkspaceAlign) + "-byte aligned");
  }

  // The array reserved at `offset` (a value returned by WorkspaceLayout::reserve).
  template <typename T>
  T* at(int64_t offset) const { return reinterpret_cast<T*>(base_ + offset); }

 private:
  char* base_;
};

}  // namespace gencore::gpu
