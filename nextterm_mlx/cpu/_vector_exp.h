/*
 * exp of eight floats at once, for the primitives in _swiglu.cpp and
 * _attention.cpp. MLX's Linux wheel is built for baseline x86-64: its exp
 * takes one element at a time and calls libm's fmaf for each multiply-add.
 * This is Cephes' expf (range reduction by ln 2, a degree-5 polynomial, the
 * exponent set by integer arithmetic) with AVX2 and FMA.
 */

#pragma once

#include <immintrin.h>

/* exp(t) for t in [-87, 88], where 2^k stays a normal float; callers clamp. */
__attribute__((target("avx2,fma"), always_inline)) static inline __m256 exp_avx2(__m256 t) {
  const __m256 log2e = _mm256_set1_ps(1.44269504088896341f);
  const __m256 ln2_high = _mm256_set1_ps(0.693359375f), ln2_low = _mm256_set1_ps(-2.12194440e-4f);
  // exp(t) = 2^k * exp(r), |r| <= ln(2) / 2
  __m256 k = _mm256_round_ps(_mm256_mul_ps(t, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(k, ln2_high, t);
  r = _mm256_fnmadd_ps(k, ln2_low, r);
  __m256 poly = _mm256_fmadd_ps(_mm256_set1_ps(1.9875691500e-4f), r, _mm256_set1_ps(1.3981999507e-3f));
  poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(8.3334519073e-3f));
  poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(4.1665795894e-2f));
  poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(1.6666665459e-1f));
  poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(5.0000001201e-1f));
  __m256 exp_r = _mm256_fmadd_ps(poly, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  __m256i two_to_k = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(exp_r, _mm256_castsi256_ps(two_to_k));
}

static inline bool has_avx2_and_fma() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}
