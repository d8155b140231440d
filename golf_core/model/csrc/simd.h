// Vector helpers the CPU kernels share (GCC / Clang vector extensions, 8 fp32 lanes: AVX2
// with -march=native on x86, whatever the target has elsewhere): loads and stores, horizontal
// sum / max, and exp and tanh of 8 floats.
#pragma once

#include <cstdint>
#include <cstring>

typedef float v8 __attribute__((vector_size(32)));
typedef float v8u __attribute__((vector_size(32), aligned(4)));
typedef int32_t i8v __attribute__((vector_size(32)));

// Keeps a loaded vector in a register: without it gcc folds the load into each FMA that uses
// it, so a vector shared by 4 rows is loaded 4 times and the tiled loops become load-bound
// (session 9 measured 14-23% on the attention kernel). Changes no value.
#if defined(__x86_64__) || defined(__i386__)
#define KEEP_IN_REGISTER(v) asm("" : "+x"(v))
#else
#define KEEP_IN_REGISTER(v) ((void)0)
#endif

static inline v8 ld(const float* p) { return *reinterpret_cast<const v8u*>(p); }
static inline void st(float* p, v8 x) { *reinterpret_cast<v8u*>(p) = x; }
static inline v8 splat(float x) { return v8{x, x, x, x, x, x, x, x}; }
static inline float hsum(v8 x) {
  return ((x[0] + x[4]) + (x[1] + x[5])) + ((x[2] + x[6]) + (x[3] + x[7]));
}
static inline float hmax(v8 x) {
  float m = x[0];
  for (int k = 1; k < 8; ++k) m = x[k] > m ? x[k] : m;
  return m;
}

// exp of 8 floats (Cephes' expf: range reduction by ln 2, degree-5 polynomial; ~1 ulp).
// Inputs here are scale * s - max <= 0; below -87.3 the result is clamped near 1e-38.
static inline v8 vexp(v8 x) {
  const v8 lo = splat(-87.3f), hi = splat(88.3f);
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  v8 fx = x * 1.44269504088896341f + 0.5f;
  i8v n = __builtin_convertvector(fx, i8v);  // truncates toward zero
  v8 fn = __builtin_convertvector(n, v8);
  i8v gt = fn > fx;  // floor: one less where truncation rounded up
  n = n + gt;        // gt is -1 where true
  fn = __builtin_convertvector(n, v8);
  x = x - fn * 0.693359375f;
  x = x - fn * -2.12194440e-4f;
  v8 z = x * x;
  v8 y = splat(1.9875691500E-4f);
  y = y * x + 1.3981999507E-3f;
  y = y * x + 8.3334519073E-3f;
  y = y * x + 4.1665795894E-2f;
  y = y * x + 1.6666665459E-1f;
  y = y * x + 5.0000001201E-1f;
  y = y * z + x + 1.0f;
  i8v e = (n + 127) << 23;
  v8 pow2;
  std::memcpy(&pow2, &e, sizeof(pow2));
  return y * pow2;
}

// tanh of 8 floats: the rational approximation PyTorch's and Eigen's fast tanh use (odd degree-13
// numerator over degree-6 denominator in x^2), clamped where tanh rounds to +-1 in fp32; within
// a few ulp of tanh (tests/test_softcap_ce_kernel.py measures it against fp64).
static inline v8 vtanh(v8 x) {
  const v8 lo = splat(-7.90531110763549805f), hi = splat(7.90531110763549805f);
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const v8 x2 = x * x;
  v8 p = x2 * -2.76076847742355e-16f + 2.00018790482477e-13f;
  p = x2 * p + -8.60467152213735e-11f;
  p = x2 * p + 5.12229709037114e-08f;
  p = x2 * p + 1.48572235717979e-05f;
  p = x2 * p + 6.37261928875436e-04f;
  p = x2 * p + 4.89352455891786e-03f;
  p = x * p;
  v8 q = x2 * 1.19825839466702e-06f + 1.18534705686654e-04f;
  q = x2 * q + 2.26843463243900e-03f;
  q = x2 * q + 4.89352518554385e-03f;
  return p / q;
}
