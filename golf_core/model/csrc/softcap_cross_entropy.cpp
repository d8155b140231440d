// Cross-entropy of tanh-softcapped logits on the CPU, fp32, with its gradient in the same pass,
// and the same with the lm head fused in (golf_softcap_head_cross_entropy, below): what
// golf_core.model.softcap_ce_kernel calls through ctypes.
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
#include <algorithm>
#include <vector>

#include <omp.h>

#include "simd.h"

namespace {

// One row: its loss, and its gradient times `gscale` into g (g may be x: each element is read
// before it is written).
static void row(const float* x, int64_t y, int64_t V, float cap, float gscale, float* loss,
                float* g, std::vector<float>& e) {
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
  const v8 inv = splat(1.0f / s * gscale), one = splat(1.0f);
  for (int64_t j = 0; j < V; j += 8) {  // softmax * dtanh
    const v8 t = ld(g + j);
    st(g + j, ld(e.data() + j) * inv * (one - t * t));
  }
  g[y] -= (1.0f - ty * ty) * gscale;
}


// ---- The head fused in: loss = mean_i CE(cap * tanh(x_i W^T / cap), y_i) and its gradients
// with respect to x (N x D) and W (V x D), without the N x V logits ever leaving L1. Rows go
// in tiles of 4: their logits (4 x V, 16 KB at V = 1,024) come from W^T packed 16 vocabulary
// entries at a time, register-tiled like the attention kernel's scores; each row's softcapped
// softmax gradient (`row`) is written over its logits; then dX for the 4 rows and their share
// of dW (a per-thread V x D sum, added up at the end in thread order) read it while it is still
// in L1. The tile's rows are V + 16 floats apart and W^T is packed block by block: at a stride
// of 4 KB (V = 1,024) the streams would share L1 sets and evict each other.

constexpr int TILE = 4;
#if defined(__AVX512F__)
constexpr int COLS = 32;  // columns of dX / dW a pass: 16 accumulators of 32 registers
#else
constexpr int COLS = 16;  // 8 accumulators of 16 registers
#endif

struct Tile {
  const float* x[TILE];  // the tile's rows (a short last tile repeats its last row)
  int n;                 // rows that are real
};

// Z[r][j] = x_r . W_j for the tile's rows (row stride zs): wp = W^T in blocks of 16 vocabulary
// entries (block b: D x 16 floats at wp + b * 16 D), V % 16 == 0.
static void tile_logits(const Tile& t, const float* wp, int64_t V, int64_t D, float* Z,
                        int64_t zs) {
  for (int64_t j = 0; j < V; j += 16) {
    const float* wb = wp + j * D;
    v8 c00 = splat(0), c01 = splat(0), c10 = splat(0), c11 = splat(0);
    v8 c20 = splat(0), c21 = splat(0), c30 = splat(0), c31 = splat(0);
    for (int64_t k = 0; k < D; ++k) {
      v8 w0 = ld(wb + 16 * k), w1 = ld(wb + 16 * k + 8);
      KEEP_IN_REGISTER(w0);
      KEEP_IN_REGISTER(w1);
      const float a0 = t.x[0][k], a1 = t.x[1][k], a2 = t.x[2][k], a3 = t.x[3][k];
      c00 += a0 * w0; c01 += a0 * w1;
      c10 += a1 * w0; c11 += a1 * w1;
      c20 += a2 * w0; c21 += a2 * w1;
      c30 += a3 * w0; c31 += a3 * w1;
    }
    st(Z + j, c00); st(Z + j + 8, c01);
    st(Z + zs + j, c10); st(Z + zs + j + 8, c11);
    st(Z + 2 * zs + j, c20); st(Z + 2 * zs + j + 8, c21);
    st(Z + 3 * zs + j, c30); st(Z + 3 * zs + j + 8, c31);
  }
}

// dX rows of the tile, C columns at a time: dx_r[c] = sum_j G[r][j] W[j][c].
template <int C>
static void tile_dx(const float* G, int64_t zs, int64_t V, const float* w, int64_t ldw,
                    int64_t c0, float* const dx[TILE], int n) {
  constexpr int NV = C / 8;
  v8 acc[TILE][NV];
  for (int r = 0; r < TILE; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = splat(0);
  for (int64_t j = 0; j < V; ++j) {
    v8 wv[NV];
    for (int v = 0; v < NV; ++v) {
      wv[v] = ld(w + j * ldw + c0 + 8 * v);
      KEEP_IN_REGISTER(wv[v]);
    }
    for (int r = 0; r < TILE; ++r) {
      const float g = G[r * zs + j];
      for (int v = 0; v < NV; ++v) acc[r][v] += g * wv[v];
    }
  }
  for (int r = 0; r < n; ++r)
    for (int v = 0; v < NV; ++v) st(dx[r] + c0 + 8 * v, acc[r][v]);
}

// dW (V x D, row stride D) += G^T X for the tile, C columns at a time (rows past n have G 0).
template <int C>
static void tile_dw(const float* G, int64_t zs, int64_t V, const Tile& t, int64_t D, int64_t c0,
                    float* dw) {
  constexpr int NV = C / 8;
  v8 xs[TILE][NV];
  for (int r = 0; r < TILE; ++r)
    for (int v = 0; v < NV; ++v) {
      xs[r][v] = ld(t.x[r] + c0 + 8 * v);
      KEEP_IN_REGISTER(xs[r][v]);
    }
  for (int64_t j = 0; j < V; ++j) {
    const float g0 = G[j], g1 = G[zs + j], g2 = G[2 * zs + j], g3 = G[3 * zs + j];
    float* o = dw + j * D + c0;
    for (int v = 0; v < NV; ++v)
      st(o + 8 * v, ld(o + 8 * v) + ((g0 * xs[0][v] + g1 * xs[1][v]) +
                                     (g2 * xs[2][v] + g3 * xs[3][v])));
  }
}

// Both, for every column: chunks of COLS, then of 8 for what is left.
static void tile_grads(const float* G, int64_t zs, int64_t V, const Tile& t, const float* w,
                       int64_t ldw, int64_t D, float* const dx[TILE], float* dw) {
  int64_t c = 0;
  for (; c + COLS <= D; c += COLS) {
    tile_dx<COLS>(G, zs, V, w, ldw, c, dx, t.n);
    tile_dw<COLS>(G, zs, V, t, D, c, dw);
  }
  for (; c < D; c += 8) {
    tile_dx<8>(G, zs, V, w, ldw, c, dx, t.n);
    tile_dw<8>(G, zs, V, t, D, c, dw);
  }
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
    for (int64_t i = 0; i < N; ++i)
      row(x + i * ld, target[i], V, cap, 1.0f, loss + i, grad + i * V, e);
  }
  return 0;
}

// x: N rows of D (row stride ldx), w: V x D (row stride ldw), target: N indices. Writes the
// mean loss (*loss, summed in double), dX (N x D, contiguous) and dW (V x D, contiguous) of that
// mean. Returns 0, -1 where a target is outside [0, V), -2 where V % 16 or D % 8 != 0.
int golf_softcap_head_cross_entropy(const float* x, int64_t ldx, const float* w, int64_t ldw,
                                    const int64_t* target, int64_t N, int64_t V, int64_t D,
                                    float cap, float* loss, float* dx, float* dw, int threads) {
  if (V % 16 || D % 8) return -2;
  for (int64_t i = 0; i < N; ++i)
    if (target[i] < 0 || target[i] >= V) return -1;
  std::vector<float> wp(D * V);  // W^T in blocks of 16 vocabulary entries
  for (int64_t j = 0; j < V; ++j)
    for (int64_t k = 0; k < D; ++k) wp[(j / 16) * 16 * D + k * 16 + j % 16] = w[j * ldw + k];
  const int64_t zs = V + 16;
  const int64_t tiles = (N + TILE - 1) / TILE;
  const float gscale = 1.0f / (float)N;
  if (threads < 1) threads = 1;
  if (threads > tiles) threads = (int)(tiles > 0 ? tiles : 1);
  std::vector<std::vector<float>> dws(threads);
  std::vector<double> sums(threads, 0.0);
#pragma omp parallel num_threads(threads)
  {
    const int me = omp_get_thread_num();
    std::vector<float>& mine = dws[me];
    mine.assign(V * D, 0.0f);
    std::vector<float> Z(TILE * zs), e;
    double sum = 0.0;
    // contiguous tile ranges, one a thread, so the sums' order depends on the thread count only
    const int64_t t0 = tiles * me / threads, t1 = tiles * (me + 1) / threads;
    for (int64_t ti = t0; ti < t1; ++ti) {
      const int64_t i0 = ti * TILE;
      Tile t;
      t.n = (int)(N - i0 < TILE ? N - i0 : TILE);
      float* dxr[TILE];
      for (int r = 0; r < TILE; ++r) {
        const int64_t i = i0 + (r < t.n ? r : t.n - 1);
        t.x[r] = x + i * ldx;
        dxr[r] = dx + i * D;
      }
      tile_logits(t, wp.data(), V, D, Z.data(), zs);
      for (int r = 0; r < TILE; ++r) {
        float* z = Z.data() + r * zs;
        if (r >= t.n) {
          std::fill(z, z + V, 0.0f);
          continue;
        }
        float l;
        row(z, target[i0 + r], V, cap, gscale, &l, z, e);
        sum += l;
      }
      tile_grads(Z.data(), zs, V, t, w, ldw, D, dxr, mine.data());
    }
    sums[me] = sum;
  }
  double total = 0.0;
  for (int p = 0; p < threads; ++p) total += sums[p];
  *loss = (float)(total / (double)N);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t j = 0; j < V; ++j)
    for (int64_t k = 0; k < D; ++k) {
      float a = 0.0f;
      for (int p = 0; p < threads; ++p) a += dws[p][j * D + k];
      dw[j * D + k] = a;
    }
  return 0;
}

}  // extern "C"
