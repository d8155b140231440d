// Cross-entropy of tanh-softcapped logits on the CPU, fp32, with its gradient in the same pass:
// what golf_core.model.softcap_ce_kernel calls through ctypes.
//
// Why: every family ends in loss = CE(cap * tanh(x / cap), y) over a (tokens x vocab) logit
// matrix, 4M elements a step at the study's 4,096 tokens and vocab 1,024. Compiled by inductor
// the forward and the backward each took ~19 ms a step on one core (12% of PR #1204's step
// at width 32): several passes over 16 MB, the tanh and exp not vectorized. Here each row is
// read once, its tanh and exp computed 8 lanes at a time while the row sits in L1, and the
// gradient written as the forward goes (the loss is the graph's last node, so the backward only
// scales it).
//
// Math (per row i, z = cap * tanh(x / cap), t = tanh(x / cap)):
//   loss_i = log sum_j exp(z_j - m) + m - z_{y_i}      (m = max_j z_j)
//   d loss_i / d x_ij = (softmax(z)_j - [j == y_i]) * (1 - t_j^2)
// Rows are contiguous with stride `ld` floats; V % 8 == 0 (the wrapper falls back otherwise).

#include <cmath>
#include <cstdint>
#include <vector>

#include "simd.h"

namespace {

static void row(const float* x, int64_t y, int64_t V, float cap, float* loss, float* g,
                std::vector<float>& e) {
  if ((int64_t)e.size() < V) e.assign(V, 0.0f);
  const v8 c = splat(cap);
  v8 mx = splat(-INFINITY);
  for (int64_t j = 0; j < V; j += 8) {  // t into g, running max of z
    const v8 t = vtanh(ld(x + j) / c);
    st(g + j, t);
    const v8 z = t * c;
    mx = z > mx ? z : mx;
  }
  const float m = hmax(mx);
  const v8 mm = splat(m);
  v8 sum = splat(0);
  for (int64_t j = 0; j < V; j += 8) {  // exp(z - m) into e
    const v8 p = vexp(ld(g + j) * c - mm);
    st(e.data() + j, p);
    sum += p;
  }
  const float s = hsum(sum);
  const float ty = g[y];
  *loss = std::log(s) + m - ty * cap;
  const v8 inv = splat(1.0f / s), one = splat(1.0f);
  for (int64_t j = 0; j < V; j += 8) {  // softmax * dtanh
    const v8 t = ld(g + j);
    st(g + j, ld(e.data() + j) * inv * (one - t * t));
  }
  g[y] -= 1.0f - ty * ty;
}

}  // namespace

extern "C" {

// x: N rows of V logits, row stride ld; target: N indices; writes loss (N) and grad (N x V,
// contiguous). Returns 0, -1 where a target is outside [0, V), -2 where V % 8 != 0.
int golf_softcap_cross_entropy(const float* x, int64_t ld, const int64_t* target, int64_t N,
                               int64_t V, float cap, float* loss, float* grad, int threads) {
  if (V % 8) return -2;
  for (int64_t i = 0; i < N; ++i)
    if (target[i] < 0 || target[i] >= V) return -1;
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> e;
#pragma omp for schedule(static)
    for (int64_t i = 0; i < N; ++i) row(x + i * ld, target[i], V, cap, loss + i, grad + i * V, e);
  }
  return 0;
}

}  // extern "C"
