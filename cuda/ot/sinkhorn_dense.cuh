// Log-domain Sinkhorn on B given dense cost matrices on the GPU, float32: the
// same iteration, error, stopping rules and status codes as the CPU kernel
// (csrc/ot/sinkhorn_dense.h; specification gencore.ot.reference.sinkhorn_dense).
// One block per problem runs the whole loop: every problem stops on its own and
// the host is never synchronised, however many iterations it takes. Meant for
// the small problems of a given cost matrix (a minibatch coupling, B x n x m
// batches); large point clouds belong to the streamed solver (gencore.ot.sinkhorn).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace gencore::gpu {

// Workspace of sinkhorn_dense: B (n + m) floats (each problem's shifted
// potentials log a + f / reg, log b + g / reg).
int64_t sinkhorn_dense_workspace_bytes(int64_t B, int64_t n, int64_t m);

// cost [B, n, m], a [B, n], b [B, m] (contiguous) -> f [B, n], g [B, m],
// n_iter [B], error [B] (float64, the last measured), status [B] (0 converged,
// 1 max_iter, 2 plateau). Queued on `stream`; never synchronises. Throws
// std::invalid_argument for B < 0, n or m < 1 (with B > 0), reg <= 0, damping
// outside (0, 1], tol < 0, max_iter or plateau < 1, a null pointer or a small
// workspace.
void sinkhorn_dense(const float* cost, const float* a, const float* b, int64_t B, int64_t n, int64_t m, double reg,
                    double damping, double tol, int64_t max_iter, int64_t plateau, float* f, float* g,
                    int64_t* n_iter, double* error, int64_t* status, void* workspace, int64_t workspace_bytes,
                    cudaStream_t stream, int device);

}  // namespace gencore::gpu
