// Network simplex for the transportation problem (see emd.h).
//
// The graph: source nodes 0..n-1 (rows with mass), sink nodes n..n+m-1
// (columns with mass), and an artificial root R = n + m. Real arcs i -> j
// (id i * m + j) cost C_ij and have no capacity; artificial arcs i -> R and
// R -> j cost `big` = 3 max|C| (3 when C = 0), so that routing mass through the root is
// always dearer than the direct arc and no optimum keeps any there.
//
// The basis is a spanning tree rooted at R, stored as parent pointers with
// the arc to the parent (its direction and flow) and doubly linked child
// lists, so the subtree cut off by a pivot can be walked in O(its size).
// Non-tree arcs carry no flow (there are no upper bounds). Potentials phi
// give reduced costs C_ij + phi_i - phi_j, zero on tree arcs; the duals are
// u_i = -phi_i, v_j = phi_j.
//
// Pivoting: block search (scan the arcs cyclically in blocks of
// ~sqrt(n m); enter the most negative reduced cost of the first block that
// has one). Leaving arc: the last blocking arc of the cycle met from the apex
// along the entering arc's orientation, which keeps the tree strongly
// feasible (every zero-flow tree arc points to the root) and so rules out
// cycling on degenerate pivots (AMO, section 11.5). When no arc prices out,
// the potentials are recomputed from the tree (drift of the incremental
// updates) and the arcs are priced once more before stopping.
//
// The code here is written from the textbook description; the pure-Python
// reference (gencore.ot.reference.emd_reference) runs the same steps in the
// same order, so both give bit-identical plans, duals and pivot counts.
#include "ot/emd.h"

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "gencore/check.h"
#include "gencore/parallel.h"

namespace gencore::ot {

namespace {

constexpr int64_t kNone = -1;
constexpr int64_t kArtificial = -1;  // pred of a node hanging from the root by an artificial arc
constexpr double kCostTolerance = 1e-12;  // x max|C|: reduced costs above -this price out
constexpr double kMassTolerance = 1e-10;  // x total mass: artificial flow left at an optimum

// Per-thread working memory, reused from one problem to the next.
struct Workspace {
  std::vector<int64_t> rows, cols;  // kept (positive mass) rows / columns of the original problem
  std::vector<double> supply, demand, cost;
  std::vector<int64_t> parent, first_child, next_sibling, prev_sibling, depth, pred, path;
  std::vector<int8_t> up;  // 1: the arc to the parent points to it (x -> parent), 0: parent -> x
  std::vector<double> flow, phi;
  std::vector<uint8_t> in_tree;
  std::vector<std::pair<int64_t, double>> entries;
};

class Solver {
 public:
  Solver(Workspace& w, int64_t n, int64_t m, double big, double tolerance)
      : w_(w), n_(n), m_(m), root_(n + m), big_(big), tolerance_(tolerance) {
    const int64_t nodes = n + m + 1;
    for (auto* v : {&w.parent, &w.first_child, &w.next_sibling, &w.prev_sibling, &w.depth, &w.pred})
      v->assign(nodes, kNone);
    w.up.assign(nodes, 0);
    w.flow.assign(nodes, 0.0);
    w.phi.assign(nodes, 0.0);
    w.in_tree.assign(n * m, 0);
    w.depth[root_] = 0;
    // The initial tree: every source sends its mass to the root, the root feeds every sink.
    for (int64_t x = 0; x < n + m; ++x) {
      w.parent[x] = root_;
      w.pred[x] = kArtificial;
      w.depth[x] = 1;
      const bool source = x < n;
      w.up[x] = source ? 1 : 0;
      w.flow[x] = source ? w.supply[x] : w.demand[x - n];
      w.phi[x] = source ? -big : big;
      link(x, root_);
    }
    block_ = std::max<int64_t>(10, static_cast<int64_t>(std::ceil(std::sqrt(static_cast<double>(n * m)))));
  }

  // Pivots until optimal or max_iter; returns the status.
  EmdStatus run(int64_t max_iter, int64_t& pivots) {
    pivots = 0;
    for (;;) {
      int64_t entering = find_entering();
      if (entering == kNone) {
        recompute_potentials();
        entering = find_entering();
        if (entering == kNone) return EmdStatus::optimal;
      }
      if (pivots >= max_iter) return EmdStatus::iteration_limit;
      pivot(entering);
      ++pivots;
    }
  }

 private:
  double reduced_cost(int64_t e, int64_t i, int64_t j) const { return w_.cost[e] + w_.phi[i] - w_.phi[n_ + j]; }

  // Block search from next_arc_; kNone when a whole cycle over the arcs finds none below -tolerance.
  int64_t find_entering() {
    const int64_t arcs = n_ * m_;
    double best = -tolerance_;
    int64_t best_arc = kNone;
    int64_t e = next_arc_, i = e / m_, j = e - i * m_, in_block = 0;
    const double* cost = w_.cost.data();
    const double* phi = w_.phi.data();
    const double* phi_sink = phi + n_;
    const uint8_t* in_tree = w_.in_tree.data();
    for (int64_t scanned = 0; scanned < arcs;) {
      // One stretch of row i: to the end of the row or of the block, whichever comes first.
      const int64_t stretch = std::min(m_ - j, block_ - in_block);
      const double phi_i = phi[i];
      for (int64_t t = 0; t < stretch; ++t) {
        if (in_tree[e + t]) continue;
        const double r = cost[e + t] + phi_i - phi_sink[j + t];
        if (r < best) {
          best = r;
          best_arc = e + t;
        }
      }
      e += stretch;
      j += stretch;
      in_block += stretch;
      scanned += stretch;
      if (j == m_) {
        j = 0;
        if (++i == n_) i = 0, e = 0;
      }
      if (in_block == block_) {
        in_block = 0;
        if (best_arc != kNone) break;
      }
    }
    next_arc_ = e;
    return best_arc;
  }

  void link(int64_t child, int64_t parent) {
    auto& w = w_;
    w.parent[child] = parent;
    w.prev_sibling[child] = kNone;
    w.next_sibling[child] = w.first_child[parent];
    if (w.first_child[parent] != kNone) w.prev_sibling[w.first_child[parent]] = child;
    w.first_child[parent] = child;
  }

  void unlink(int64_t child) {
    auto& w = w_;
    const int64_t prev = w.prev_sibling[child], next = w.next_sibling[child];
    if (prev != kNone)
      w.next_sibling[prev] = next;
    else
      w.first_child[w.parent[child]] = next;
    if (next != kNone) w.prev_sibling[next] = prev;
  }

  void pivot(int64_t entering) {
    auto& w = w_;
    const int64_t i = entering / m_, j = entering - i * m_;
    const int64_t source = i, sink = n_ + j;
    const double d = reduced_cost(entering, i, j);
    // The apex: where the tree paths from both ends meet.
    int64_t x = source, y = sink;
    while (x != y) {
      if (w.depth[x] > w.depth[y]) {
        x = w.parent[x];
      } else if (w.depth[y] > w.depth[x]) {
        y = w.parent[y];
      } else {
        x = w.parent[x];
        y = w.parent[y];
      }
    }
    const int64_t apex = x;
    // The cycle runs apex ~> source -> sink ~> apex. Blocking arcs are the ones it crosses
    // backwards: on the source side the arcs pointing up, on the sink side those pointing down.
    // The last one met from the apex: on the sink side the highest (<=), on the source side
    // the lowest (<, walking up from the source), and the sink side wins ties.
    double delta_source = INFINITY, delta_sink = INFINITY;
    int64_t leave_source = kNone, leave_sink = kNone;
    for (x = source; x != apex; x = w.parent[x])
      if (w.up[x] && w.flow[x] < delta_source) delta_source = w.flow[x], leave_source = x;
    for (x = sink; x != apex; x = w.parent[x])
      if (!w.up[x] && w.flow[x] <= delta_sink) delta_sink = w.flow[x], leave_sink = x;
    const bool sink_side = delta_sink <= delta_source;
    const double delta = sink_side ? delta_sink : delta_source;
    const int64_t leaving = sink_side ? leave_sink : leave_source;
    GENCORE_CHECK(leaving != kNone, "emd: unbounded pivot cycle (internal error)");
    if (delta > 0) {
      for (x = source; x != apex; x = w.parent[x]) w.flow[x] += w.up[x] ? -delta : delta;
      for (x = sink; x != apex; x = w.parent[x]) w.flow[x] += w.up[x] ? delta : -delta;
    }
    // Re-hang the cut-off subtree: the path from its entering end q up to `leaving` reverses.
    const int64_t q = sink_side ? sink : source, hook = sink_side ? source : sink;
    if (w.pred[leaving] != kArtificial) w.in_tree[w.pred[leaving]] = 0;
    w.path.clear();
    for (x = q; x != leaving; x = w.parent[x]) w.path.push_back(x);
    w.path.push_back(leaving);
    unlink(leaving);
    for (size_t t = 0; t + 1 < w.path.size(); ++t) unlink(w.path[t]);
    // Walking down from `leaving`, each node takes the arc (and flow) of the node below it.
    for (size_t t = w.path.size() - 1; t >= 1; --t) {
      const int64_t node = w.path[t], below = w.path[t - 1];
      w.pred[node] = w.pred[below];
      w.up[node] = !w.up[below];
      w.flow[node] = w.flow[below];
      link(node, below);
    }
    w.pred[q] = entering;
    w.up[q] = sink_side ? 0 : 1;  // source -> sink: a sink hangs below the arc, a source above it
    w.flow[q] = delta;
    link(q, hook);
    w.in_tree[entering] = 1;
    // The subtree's depths, and potentials shifted so the entering arc's reduced cost is 0.
    const double shift = sink_side ? d : -d;
    for_subtree(q, [&](int64_t node) {
      w.depth[node] = w.depth[w.parent[node]] + 1;
      w.phi[node] += shift;
    });
  }

  // f(node) for every node of the subtree under `top` (top first), parents before children.
  template <typename F>
  void for_subtree(int64_t top, F&& f) {
    auto& w = w_;
    int64_t x = top;
    f(x);
    for (;;) {
      if (w.first_child[x] != kNone) {
        x = w.first_child[x];
      } else {
        while (x != top && w.next_sibling[x] == kNone) x = w.parent[x];
        if (x == top) return;
        x = w.next_sibling[x];
      }
      f(x);
    }
  }

  // Potentials from the tree arcs alone (phi_root = 0), without the drift of incremental shifts.
  void recompute_potentials() {
    auto& w = w_;
    for (int64_t c = w.first_child[root_]; c != kNone; c = w.next_sibling[c]) {
      for_subtree(c, [&](int64_t node) {
        const int64_t e = w.pred[node];
        if (e == kArtificial) {
          w.phi[node] = node < n_ ? -big_ : big_;
        } else if (node >= n_) {  // a sink below source i: C_ij + phi_i - phi_j = 0
          w.phi[node] = w.cost[e] + w.phi[w.parent[node]];
        } else {
          w.phi[node] = w.phi[w.parent[node]] - w.cost[e];
        }
      });
    }
  }

  Workspace& w_;
  int64_t n_, m_, root_;
  double big_, tolerance_;
  int64_t block_ = 10, next_arc_ = 0;
};

template <typename T>
void solve_one(const EmdProblems<T>& p, int64_t k, int64_t max_iter, const EmdOutputs& out, Workspace& w) {
  const int64_t n = p.n, m = p.m, K = n + m - 1;
  const double* a = p.a + k * n;
  const double* b = p.b + k * m;
  const T* cost = p.cost + k * p.cost_batch_stride;
  auto c = [&](int64_t i, int64_t j) { return static_cast<double>(cost[i * p.cost_row_stride + j]); };

  // The finiteness check and the cost scale, in one pass over the original cost.
  double cmax = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const T* row = cost + i * p.cost_row_stride;
    double row_max = 0.0;
    bool finite = true;
    for (int64_t j = 0; j < m; ++j) {
      const double v = static_cast<double>(row[j]);
      finite = finite && std::isfinite(v);
      row_max = std::max(row_max, std::fabs(v));
    }
    if (!finite) fail_non_finite_row("M", k * n + i);
    cmax = std::max(cmax, row_max);
  }

  // Rows and columns without mass take no part in the flow.
  w.rows.clear();
  w.cols.clear();
  w.supply.clear();
  w.demand.clear();
  double total_a = 0.0, total_b = 0.0;
  for (int64_t i = 0; i < n; ++i) total_a += a[i];
  for (int64_t j = 0; j < m; ++j) total_b += b[j];
  for (int64_t i = 0; i < n; ++i)
    if (a[i] > 0) w.rows.push_back(i), w.supply.push_back(a[i]);
  const double rescale = total_a / total_b;
  for (int64_t j = 0; j < m; ++j)
    if (b[j] > 0) w.cols.push_back(j), w.demand.push_back(b[j] * rescale);
  const int64_t nk = static_cast<int64_t>(w.rows.size()), mk = static_cast<int64_t>(w.cols.size());
  GENCORE_CHECK(nk > 0 && mk > 0, "emd: problem ", k, " has no mass (a and b must have positive totals)");
  w.cost.resize(nk * mk);
  for (int64_t i = 0; i < nk; ++i)
    for (int64_t j = 0; j < mk; ++j) w.cost[i * mk + j] = c(w.rows[i], w.cols[j]);

  const double scale = cmax > 0 ? cmax : 1.0;
  Solver solver(w, nk, mk, 3.0 * scale, kCostTolerance * scale);
  int64_t pivots = 0;
  EmdStatus status = solver.run(max_iter, pivots);

  // The plan: real tree arcs with mass; what still sits on artificial arcs is, at an optimum,
  // rounding (dropped), and after the pivot limit, spread north-west-corner style so the plan
  // keeps the marginals (at most (sources + sinks - 1) more entries, which the tree's
  // artificial arcs leave room for within K).
  w.entries.clear();
  std::vector<std::pair<int64_t, double>> excess, deficit;
  double artificial = 0.0;
  for (int64_t x = 0; x < nk + mk; ++x) {
    if (w.pred[x] != kArtificial) {
      if (w.flow[x] > 0) w.entries.emplace_back(w.pred[x], w.flow[x]);
    } else if (w.flow[x] > 0) {
      artificial += w.flow[x];
      (x < nk ? excess : deficit).emplace_back(x < nk ? x : x - nk, w.flow[x]);
    }
  }
  if (status == EmdStatus::optimal && artificial > kMassTolerance * total_a) status = EmdStatus::infeasible;
  if (status != EmdStatus::optimal) {
    size_t s = 0, t = 0;
    while (s < excess.size() && t < deficit.size()) {
      const double moved = std::min(excess[s].second, deficit[t].second);
      if (moved > 0) w.entries.emplace_back(excess[s].first * mk + deficit[t].first, moved);
      excess[s].second -= moved;
      deficit[t].second -= moved;
      if (excess[s].second <= 0) ++s;
      else ++t;
    }
  }
  std::sort(w.entries.begin(), w.entries.end());
  int64_t* rows_out = out.index + k * 2 * K;
  int64_t* cols_out = rows_out + K;
  double* mass_out = out.mass + k * K;
  int64_t used = 0;
  double total_cost = 0.0;
  for (size_t t = 0; t < w.entries.size(); ++t) {
    const auto [e, mass] = w.entries[t];
    if (used > 0 && rows_out[used - 1] == w.rows[e / mk] && cols_out[used - 1] == w.cols[e % mk]) {
      mass_out[used - 1] += mass;  // an arc the corner fill met again
    } else {
      GENCORE_CHECK(used < K, "emd: more than n + m - 1 plan entries (internal error)");
      rows_out[used] = w.rows[e / mk];
      cols_out[used] = w.cols[e % mk];
      mass_out[used] = mass;
      ++used;
    }
    total_cost += mass * w.cost[e];
  }
  for (int64_t t = used; t < K; ++t) rows_out[t] = cols_out[t] = -1, mass_out[t] = 0.0;

  // Duals: u_i = -phi_i, v_j = phi_j on the kept rows/columns; a row without mass gets the
  // largest u its row allows (min_j C_ij - v_j), then a column without mass likewise, so
  // u_i + v_j <= C_ij everywhere; finally the shift that makes a.u = b.v.
  double* u = out.u + k * n;
  double* v = out.v + k * m;
  constexpr double kUnset = INFINITY;
  std::fill(u, u + n, kUnset);
  std::fill(v, v + m, kUnset);
  for (int64_t i = 0; i < nk; ++i) u[w.rows[i]] = -w.phi[i];
  for (int64_t j = 0; j < mk; ++j) v[w.cols[j]] = w.phi[nk + j];
  for (int64_t i = 0; i < n; ++i) {
    if (u[i] != kUnset) continue;
    double best = INFINITY;
    for (int64_t j = 0; j < mk; ++j) best = std::min(best, c(i, w.cols[j]) - v[w.cols[j]]);
    u[i] = best;
  }
  for (int64_t j = 0; j < m; ++j) {
    if (v[j] != kUnset) continue;
    double best = INFINITY;
    for (int64_t i = 0; i < n; ++i) best = std::min(best, c(i, j) - u[i]);
    v[j] = best;
  }
  double au = 0.0, bv = 0.0, total_b_kept = 0.0;
  for (int64_t i = 0; i < n; ++i) au += a[i] * u[i];
  for (int64_t j = 0; j < mk; ++j) bv += w.demand[j] * v[w.cols[j]], total_b_kept += w.demand[j];
  const double shift = (bv - au) / (total_a + total_b_kept);
  for (int64_t i = 0; i < n; ++i) u[i] += shift;
  for (int64_t j = 0; j < m; ++j) v[j] -= shift;

  out.cost[k] = total_cost;
  out.nnz[k] = used;
  out.n_iter[k] = pivots;
  out.status[k] = static_cast<int64_t>(status);
}

}  // namespace

template <typename T>
void emd(const EmdProblems<T>& problems, int64_t max_iter, const EmdOutputs& out, int threads) {
  GENCORE_CHECK(problems.n > 0 && problems.m > 0, "emd: empty problem (n=", problems.n, ", m=", problems.m, ")");
  GENCORE_CHECK(max_iter >= 0, "emd: max_iter must be >= 0");
  parallel_for(problems.batch, threads, Schedule::dynamic, [] { return Workspace{}; },
               [&](Workspace& w, int64_t k) { solve_one(problems, k, max_iter, out, w); });
}

template void emd<float>(const EmdProblems<float>&, int64_t, const EmdOutputs&, int);
template void emd<double>(const EmdProblems<double>&, int64_t, const EmdOutputs&, int);

}  // namespace gencore::ot
