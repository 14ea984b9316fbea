// Mahalanobis distances on the GPU, fp32, from already-whitened inputs.
//   z [Q, R] = (features - mu_bar) L, mt [C, R] = (means - mu_bar) L
//   (row-major, contiguous, device memory; the Python layer computes both with
//   torch matmuls, i.e. cuBLAS on the caller's stream)
//   -> out [Q, C] (reduce none) or [Q] (reduce min), nearest [Q] int64
//   d_qc = max(||z_q||^2 + ||mt_c||^2 - 2 z_q.mt_c, 0)
// Same contract as csrc/ood/mahalanobis.h, except that nearest breaks ties on the
// clamped distance (the CPU kernel on the unclamped one): both are the lowest
// index among equal values, they differ only where rounding clamps several
// classes to 0. A NaN distance wins the min (and is the nearest).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace gencore::gpu {

enum class MahalanobisReduce : int { none = 0, min = 1 };

// Bytes of the workspace mahalanobis() needs: a keys tile of slab x chunk
// floats, and for reduce none the running minimum [slab] after it,
//   slab  = min(Q, 4096)
//   chunk = min(round_up(C, 128), 16384)
//   bytes = 4 * slab * chunk + (reduce none ? 4 * slab : 0)
// (0 for Q == 0; at most 256 MiB + 16 KiB), independent of R (part of the
// signature so a later plan may use it). Throws std::invalid_argument for
// Q < 0, C < 0 or an unknown reduce code.
int64_t mahalanobis_workspace_bytes(int64_t Q, int64_t C, int64_t R, MahalanobisReduce reduce);

// `workspace` is caller memory of at least mahalanobis_workspace_bytes(Q, C, R,
// reduce) bytes, 16-byte aligned and ordered with `stream` (a torch tensor
// allocated while `stream` is current is). Everything is queued on `stream` on
// `device`; the host is never synchronised and nothing is allocated. Throws
// std::invalid_argument on bad sizes or a too small workspace,
// std::runtime_error on CUDA errors.
void mahalanobis(const float* z, const float* mt, int64_t Q, int64_t C, int64_t R,
                 MahalanobisReduce reduce, float* out, int64_t* nearest, void* workspace,
                 int64_t workspace_bytes, cudaStream_t stream, int device);

}  // namespace gencore::gpu
