// Causal softmax attention for small heads (head dim 8, 16, 32 or 64) on the CPU, fp32,
// forward and backward: what golf_core.model.attention_kernel calls through ctypes.
//
// Why: at the study's widths a head is 8-16 wide and a sequence 256-1024 tokens, and
// PyTorch's CPU flash attention runs such heads at ~14% of one core's FMA peak (its inner
// products are 16 long). Here one head's whole T x T score matrix lives in a per-thread buffer
// (256 KB at T = 256, in L2), each product is register-tiled (4 query rows x 16 keys, or 4
// rows x the head dim), and only the causal triangle is computed.
//
// Math (per head; s = q k^T, scale = 1 / sqrt(Dh)):
//   forward   P = softmax(scale * s) over keys j <= i, O = P V, lse_i = log sum_j exp(scale s_ij)
//   backward  P recomputed from lse; Di = dO_i . O_i; dP = dO V^T; dS = P * (dP - Di);
//             dQ = scale dS K; dK = scale dS^T Q; dV = P^T dO
// GQA: `group` query heads share one key/value head (head h reads kv head h / group); the
// backward runs a kv head's whole group in one task, so dK and dV need no atomics.
//
// Layout: tensors are (B, heads, T, Dh) with any strides for B, heads and T and the last dim
// contiguous; strides are in floats. O and dQ / dK / dV are written with the strides passed.
// Requires T % 16 == 0 (the wrapper falls back to PyTorch's attention otherwise).
// Only GCC / Clang vector extensions: AVX2 with -march=native on x86, whatever the target
// has elsewhere.

#include <cmath>
#include <cstdint>
#include <vector>

#include "simd.h"

namespace {

struct View {  // one (B, heads, T, Dh) tensor: base pointer and strides in floats
  float* p;
  int64_t sb, sh, st;
  float* row(int64_t b, int64_t h, int64_t t) const { return p + b * sb + h * sh + t * st; }
};

// Keys a query-row block [i0, i0 + 4) needs: 0 .. i0 + 3, rounded up to 16.
static inline int64_t key_end(int64_t i0, int64_t T) {
  int64_t e = (i0 + 4 + 15) / 16 * 16;
  return e < T ? e : T;
}

// X^T of one head (T x D, row stride `stride`) into xt (D x T).
template <int D>
static void transpose(const float* x, int64_t stride, int64_t T, float* xt) {
  for (int64_t j = 0; j < T; ++j)
    for (int d = 0; d < D; ++d) xt[d * T + j] = x[j * stride + d];
}

// S[i][j] = a_i . b_j for the causal rows: a (T x D, stride sa), bt = b^T (D x T);
// S is T x T (row stride T), filled for j < key_end(i).
template <int D>
static void scores(const float* a, int64_t sa, const float* bt, int64_t T, float* S) {
  for (int64_t i0 = 0; i0 < T; i0 += 4) {
    const int64_t je = key_end(i0, T);
    const float* a0 = a + i0 * sa;
    for (int64_t j = 0; j < je; j += 16) {
      v8 c00 = splat(0), c01 = splat(0), c10 = splat(0), c11 = splat(0);
      v8 c20 = splat(0), c21 = splat(0), c30 = splat(0), c31 = splat(0);
      for (int d = 0; d < D; ++d) {
        v8 k0 = ld(bt + d * T + j), k1 = ld(bt + d * T + j + 8);
        KEEP_IN_REGISTER(k0);  // one load each for the 4 rows, not four
        KEEP_IN_REGISTER(k1);
        const float q0 = a0[d], q1 = a0[sa + d], q2 = a0[2 * sa + d], q3 = a0[3 * sa + d];
        c00 += q0 * k0; c01 += q0 * k1;
        c10 += q1 * k0; c11 += q1 * k1;
        c20 += q2 * k0; c21 += q2 * k1;
        c30 += q3 * k0; c31 += q3 * k1;
      }
      float* s = S + i0 * T + j;
      st(s, c00); st(s + 8, c01);
      st(s + T, c10); st(s + T + 8, c11);
      st(s + 2 * T, c20); st(s + 2 * T + 8, c21);
      st(s + 3 * T, c30); st(s + 3 * T + 8, c31);
    }
  }
}

// out_i = alpha * sum_{j <= i} W[i][j] x_j  (W: T x T causal, zero above the diagonal within
// key_end; x: T x D, stride sx; out rows with stride so).
template <int D>
static void rows_times(const float* W, int64_t T, const float* x, int64_t sx, float alpha,
                       float* out, int64_t so) {
  constexpr int NV = D / 8;
  for (int64_t i0 = 0; i0 < T; i0 += 4) {
    v8 acc[4][NV];
    for (int r = 0; r < 4; ++r)
      for (int v = 0; v < NV; ++v) acc[r][v] = splat(0);
    const float* w = W + i0 * T;
    for (int64_t j = 0; j <= i0 + 3; ++j) {
      const float* xj = x + j * sx;
      v8 xv[NV];
      for (int v = 0; v < NV; ++v) {
        xv[v] = ld(xj + 8 * v);
        KEEP_IN_REGISTER(xv[v]);
      }
      for (int r = 0; r < 4; ++r) {
        const float wr = w[r * T + j];
        for (int v = 0; v < NV; ++v) acc[r][v] += wr * xv[v];
      }
    }
    for (int r = 0; r < 4; ++r)
      for (int v = 0; v < NV; ++v) st(out + (i0 + r) * so + 8 * v, acc[r][v] * alpha);
  }
}

// out_j (+)= alpha * sum_{i >= j} W[i][j] x_i: the transposed product (dK, dV). `accumulate`
// adds to out (a GQA group's later heads), else overwrites it.
template <int D>
static void cols_times(const float* W, int64_t T, const float* x, int64_t sx, float alpha,
                       float* out, int64_t so, bool accumulate) {
  constexpr int NV = D / 8;
  for (int64_t j0 = 0; j0 < T; j0 += 4) {
    v8 acc[4][NV];
    for (int r = 0; r < 4; ++r)
      for (int v = 0; v < NV; ++v) acc[r][v] = splat(0);
    for (int64_t i = j0; i < T; ++i) {
      const float* xi = x + i * sx;
      const float* w = W + i * T + j0;
      v8 xv[NV];
      for (int v = 0; v < NV; ++v) {
        xv[v] = ld(xi + 8 * v);
        KEEP_IN_REGISTER(xv[v]);
      }
      for (int r = 0; r < 4; ++r) {
        const float wr = w[r];
        for (int v = 0; v < NV; ++v) acc[r][v] += wr * xv[v];
      }
    }
    for (int r = 0; r < 4; ++r)
      for (int v = 0; v < NV; ++v) {
        float* o = out + (j0 + r) * so + 8 * v;
        st(o, accumulate ? ld(o) + acc[r][v] * alpha : acc[r][v] * alpha);
      }
  }
}

// Row i of S (raw scores) -> P (probabilities, zero for i < j < key_end); returns lse_i.
// With `lse` given (backward) P = exp(scale s - lse) as the forward computed it.
static inline float softmax_row(float* s, int64_t i, int64_t je, float scale, const float* lse) {
  const int64_t n = i + 1;  // valid keys 0 .. i
  for (int64_t j = n; j < je; ++j) s[j] = -INFINITY;
  float m;
  if (lse) {
    m = *lse;
  } else {
    v8 mv = splat(-INFINITY);
    for (int64_t j = 0; j < je; j += 8) {
      const v8 x = ld(s + j);
      mv = x > mv ? x : mv;
    }
    m = hmax(mv) * scale;
  }
  v8 sum = splat(0);
  const v8 sc = splat(scale), mm = splat(m);
  for (int64_t j = 0; j < je; j += 8) {
    const v8 x = ld(s + j);
    v8 p = vexp(x * sc - mm);
    p = x == -INFINITY ? splat(0) : p;
    st(s + j, p);
    sum += p;
  }
  if (lse) return *lse;
  const float l = hsum(sum), inv = 1.0f / l;
  const v8 iv = splat(inv);
  for (int64_t j = 0; j < je; j += 8) st(s + j, ld(s + j) * iv);
  return m + std::log(l);
}

struct Scratch {
  std::vector<float> P, dP, kt;
  void fit(int64_t T, int64_t D) {
    if ((int64_t)P.size() < T * T) { P.assign(T * T, 0.0f); dP.assign(T * T, 0.0f); }
    if ((int64_t)kt.size() < T * D) kt.assign(T * D, 0.0f);
  }
};

template <int D>
static void forward_head(const View& q, const View& k, const View& v, const View& o,
                         float* lse, int64_t b, int64_t h, int64_t hk, int64_t T, float scale,
                         Scratch& w) {
  w.fit(T, D);
  transpose<D>(k.row(b, hk, 0), k.st, T, w.kt.data());
  float* P = w.P.data();
  scores<D>(q.row(b, h, 0), q.st, w.kt.data(), T, P);
  for (int64_t i = 0; i < T; ++i) lse[i] = softmax_row(P + i * T, i, key_end(i / 4 * 4, T), scale, nullptr);
  rows_times<D>(P, T, v.row(b, hk, 0), v.st, 1.0f, o.row(b, h, 0), o.st);
}

template <int D>
static void backward_head(const View& q, const View& k, const View& v, const View& o,
                          const View& dO, const float* lse, const View& dq, const View& dk,
                          const View& dv, int64_t b, int64_t h, int64_t hk, int64_t T,
                          float scale, bool accumulate, Scratch& w) {
  w.fit(T, D);
  float* P = w.P.data();
  float* dP = w.dP.data();
  transpose<D>(k.row(b, hk, 0), k.st, T, w.kt.data());
  scores<D>(q.row(b, h, 0), q.st, w.kt.data(), T, P);
  for (int64_t i = 0; i < T; ++i) softmax_row(P + i * T, i, key_end(i / 4 * 4, T), scale, lse + i);
  transpose<D>(v.row(b, hk, 0), v.st, T, w.kt.data());
  scores<D>(dO.row(b, h, 0), dO.st, w.kt.data(), T, dP);
  for (int64_t i = 0; i < T; ++i) {  // dS = P * (dP - Di), in dP
    const float* oi = o.row(b, h, i);
    const float* gi = dO.row(b, h, i);
    v8 dv8 = splat(0);
    for (int d = 0; d < D; d += 8) dv8 += ld(oi + d) * ld(gi + d);
    const v8 Di = splat(hsum(dv8));
    const int64_t je = key_end(i / 4 * 4, T);
    float* p = P + i * T;
    float* g = dP + i * T;
    for (int64_t j = 0; j < je; j += 8) st(g + j, ld(p + j) * (ld(g + j) - Di));
  }
  rows_times<D>(dP, T, k.row(b, hk, 0), k.st, scale, dq.row(b, h, 0), dq.st);
  cols_times<D>(dP, T, q.row(b, h, 0), q.st, scale, dk.row(b, hk, 0), dk.st, accumulate);
  cols_times<D>(P, T, dO.row(b, h, 0), dO.st, 1.0f, dv.row(b, hk, 0), dv.st, accumulate);
}

static thread_local Scratch scratch;

template <int D>
static void forward_all(View q, View k, View v, View o, float* lse, int64_t B, int64_t H,
                        int64_t group, int64_t T, float scale, int threads) {
#pragma omp parallel for num_threads(threads) schedule(dynamic)
  for (int64_t t = 0; t < B * H; ++t) {
    const int64_t b = t / H, h = t % H;
    forward_head<D>(q, k, v, o, lse + t * T, b, h, h / group, T, scale, scratch);
  }
}

template <int D>
static void backward_all(View q, View k, View v, View o, View dO, const float* lse, View dq,
                         View dk, View dv, int64_t B, int64_t H, int64_t group, int64_t T,
                         float scale, int threads) {
  const int64_t HK = H / group;
#pragma omp parallel for num_threads(threads) schedule(dynamic)
  for (int64_t t = 0; t < B * HK; ++t) {
    const int64_t b = t / HK, hk = t % HK;
    for (int64_t g = 0; g < group; ++g) {
      const int64_t h = hk * group + g;
      backward_head<D>(q, k, v, o, dO, lse + (b * H + h) * T, dq, dk, dv, b, h, hk, T, scale,
                       g > 0, scratch);
    }
  }
}

}  // namespace

extern "C" {

// Each tensor: pointer + 3 strides (batch, head, time) in floats. lse: (B, H, T) contiguous.
// Returns 0, or -1 for an unsupported head dim.
int golf_attention_forward(float* q, int64_t qb, int64_t qh, int64_t qt, float* k, int64_t kb,
                           int64_t kh, int64_t kt, float* v, int64_t vb, int64_t vh,
                           int64_t vt, float* o, int64_t ob, int64_t oh, int64_t ot,
                           float* lse, int64_t B, int64_t H, int64_t HK, int64_t T, int64_t D,
                           float scale, int threads) {
  const View Q{q, qb, qh, qt}, K{k, kb, kh, kt}, V{v, vb, vh, vt}, O{o, ob, oh, ot};
  const int64_t g = H / HK;
  switch (D) {
    case 8: forward_all<8>(Q, K, V, O, lse, B, H, g, T, scale, threads); return 0;
    case 16: forward_all<16>(Q, K, V, O, lse, B, H, g, T, scale, threads); return 0;
    case 32: forward_all<32>(Q, K, V, O, lse, B, H, g, T, scale, threads); return 0;
    case 64: forward_all<64>(Q, K, V, O, lse, B, H, g, T, scale, threads); return 0;
    default: return -1;
  }
}

int golf_attention_backward(const int64_t* strides, float* q, float* k, float* v, float* o,
                            float* dO, float* lse, float* dq, float* dk, float* dv, int64_t B,
                            int64_t H, int64_t HK, int64_t T, int64_t D, float scale,
                            int threads) {
  const int64_t* s = strides;  // 3 per tensor: q, k, v, o, dO, dq, dk, dv
  const View Q{q, s[0], s[1], s[2]}, K{k, s[3], s[4], s[5]}, V{v, s[6], s[7], s[8]};
  const View O{o, s[9], s[10], s[11]}, G{dO, s[12], s[13], s[14]};
  const View DQ{dq, s[15], s[16], s[17]}, DK{dk, s[18], s[19], s[20]}, DV{dv, s[21], s[22], s[23]};
  const int64_t g = H / HK;
  switch (D) {
    case 8: backward_all<8>(Q, K, V, O, G, lse, DQ, DK, DV, B, H, g, T, scale, threads); return 0;
    case 16: backward_all<16>(Q, K, V, O, G, lse, DQ, DK, DV, B, H, g, T, scale, threads); return 0;
    case 32: backward_all<32>(Q, K, V, O, G, lse, DQ, DK, DV, B, H, g, T, scale, threads); return 0;
    case 64: backward_all<64>(Q, K, V, O, G, lse, DQ, DK, DV, B, H, g, T, scale, threads); return 0;
    default: return -1;
  }
}

}  // extern "C"
