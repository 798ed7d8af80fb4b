// The packed-panel product tiles shared by jaxvoice's sampling kernels (packed_matmul.cc, sample_frame.cc):
// y[M, O] (+)= x[M, I] @ W for W packed as [ceil(O / 16), I, 16], float32 or bfloat16 weights, over a range
// of panels; AVX2 + FMA tiles for one or two rows, AVX-512 tiles for more where the CPU has it.

#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define JV_X86 1
#define JV_TARGET __attribute__((target("avx2,fma")))
#else
#define JV_X86 0
#endif

namespace {

constexpr int kPanel = 16;  // output columns per packed panel: two 8-float AVX2 vectors

#if JV_X86

// Eight weights of a panel row as float32: float32 loaded as is, bfloat16 widened (its bits are the high
// half of a float32).
JV_TARGET inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
JV_TARGET inline __m256 load8(const uint16_t* p) {
  __m128i half = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(half), 16));
}

// Rows m0 .. m0+MR of y, panels p0 .. p0+NP: MR * NP * 2 accumulators stay in registers over all of I.
// `Listed`: only the weight rows `rows[0..n)` are read, the inputs where x is not 0 (after a ReLU most are, and
// at one stream a product's time is the reading of its weights from L2); the same sums in the same order
// without their x * w = 0 terms, so the same floats.
template <int MR, int NP, typename W, bool Listed = false>
JV_TARGET void tile(const float* x, int64_t I, const W* w, int64_t p0, float* y, int64_t O, int64_t m0,
                    const int32_t* rows = nullptr, int64_t n = 0) {
  __m256 acc[MR][NP][2];
  for (int r = 0; r < MR; ++r)
    for (int p = 0; p < NP; ++p) acc[r][p][0] = acc[r][p][1] = _mm256_setzero_ps();
  const W* panel[NP];
  for (int p = 0; p < NP; ++p) panel[p] = w + (p0 + p) * I * kPanel;
  for (int64_t k = 0, count = Listed ? n : I; k < count; ++k) {
    const int64_t i = Listed ? rows[k] : k;
    __m256 wv[NP][2];
    for (int p = 0; p < NP; ++p) {
      wv[p][0] = load8(panel[p] + i * kPanel);
      wv[p][1] = load8(panel[p] + i * kPanel + 8);
    }
    for (int r = 0; r < MR; ++r) {
      __m256 xv = _mm256_broadcast_ss(x + (m0 + r) * I + i);
      for (int p = 0; p < NP; ++p) {
        acc[r][p][0] = _mm256_fmadd_ps(xv, wv[p][0], acc[r][p][0]);
        acc[r][p][1] = _mm256_fmadd_ps(xv, wv[p][1], acc[r][p][1]);
      }
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int p = 0; p < NP; ++p) {
      int64_t col = (p0 + p) * kPanel;
      float* out = y + (m0 + r) * O + col;
      if (col + kPanel <= O) {
        _mm256_storeu_ps(out, acc[r][p][0]);
        _mm256_storeu_ps(out + 8, acc[r][p][1]);
      } else {  // the last panel of an O that is not a multiple of 16: its padding columns are dropped
        alignas(32) float tmp[kPanel];
        _mm256_store_ps(tmp, acc[r][p][0]);
        _mm256_store_ps(tmp + 8, acc[r][p][1]);
        std::memcpy(out, tmp, sizeof(float) * (O - col));
      }
    }
}

// Panels [p_begin, p_end) for every row: rows in tiles of 4 (weights reused from L1 across a tile, and from
// L2 across tiles); one row four panels wide and two rows two panels wide, so that 8 FMAs are in flight.
template <typename W>
JV_TARGET void panels(const float* x, int64_t M, int64_t I, const W* w, float* y, int64_t O, int64_t p_begin,
                      int64_t p_end) {
  if (M == 1) {
    int64_t p = p_begin;
    for (; p + 4 <= p_end; p += 4) tile<1, 4>(x, I, w, p, y, O, 0);
    for (; p < p_end; ++p) tile<1, 1>(x, I, w, p, y, O, 0);
    return;
  }
  if (M == 2) {  // two panels at a time: 8 sums in flight, as for one row
    int64_t p = p_begin;
    for (; p + 2 <= p_end; p += 2) tile<2, 2>(x, I, w, p, y, O, 0);
    for (; p < p_end; ++p) tile<2, 1>(x, I, w, p, y, O, 0);
    return;
  }
  for (int64_t p = p_begin; p < p_end; ++p) {
    int64_t m = 0;
    for (; m + 4 <= M; m += 4) tile<4, 1>(x, I, w, p, y, O, m);
    for (; m + 2 <= M; m += 2) tile<2, 1>(x, I, w, p, y, O, m);
    for (; m < M; ++m) tile<1, 1>(x, I, w, p, y, O, m);
  }
}

// Several rows (streams) at once with AVX-512: at 16 streams each weight loaded feeds 16 FMAs, so the product
// is compute-bound, and 32 vector registers hold a tile of 8 rows x 2 panels (16 sums) that the 16 AVX2
// registers cannot. (Rows are split in even tiles as in lstm_recurrence.cc's `rows`.) Each weight row of a
// panel is loaded once per 8 rows of x; x rows are broadcast straight from memory.
#define JV_TARGET512 __attribute__((target("avx512f")))

JV_TARGET512 inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
JV_TARGET512 inline __m512 load16(const uint16_t* p) {
  __m256i half = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(half), 16));
}

template <int MR, int NP, typename W>
JV_TARGET512 void tile512(const float* x, int64_t I, const W* w, int64_t p0, float* y, int64_t O, int64_t m0) {
  __m512 acc[NP][MR];
  for (int p = 0; p < NP; ++p)
    for (int r = 0; r < MR; ++r) acc[p][r] = _mm512_setzero_ps();
  const W* panel[NP];
  for (int p = 0; p < NP; ++p) panel[p] = w + (p0 + p) * I * kPanel;
  const float* xr = x + m0 * I;
  for (int64_t i = 0; i < I; ++i) {
    __m512 wv[NP];
    for (int p = 0; p < NP; ++p) wv[p] = load16(panel[p] + i * kPanel);
    for (int r = 0; r < MR; ++r) {
      const __m512 xv = _mm512_set1_ps(xr[r * I + i]);
      for (int p = 0; p < NP; ++p) acc[p][r] = _mm512_fmadd_ps(xv, wv[p], acc[p][r]);
    }
  }
  for (int p = 0; p < NP; ++p) {
    const int64_t col = (p0 + p) * kPanel;
    const __mmask16 mask = static_cast<__mmask16>((1u << std::min<int64_t>(kPanel, O - col)) - 1u);
    for (int r = 0; r < MR; ++r) _mm512_mask_storeu_ps(y + (m0 + r) * O + col, mask, acc[p][r]);
  }
}

template <int NP, typename W>
JV_TARGET512 void rows512(const float* x, int64_t M, int64_t I, const W* w, int64_t p, float* y, int64_t O) {
  // rows in even tiles of at most 8 (a tile of 1-2 rows would wait on its own FMA latency)
  const int64_t tiles = (M + 7) / 8;
  for (int64_t t = 0, m = 0; t < tiles; ++t) {
    const int64_t n = M / tiles + (t < M % tiles ? 1 : 0);
    switch (n) {
#define JV_CASE(r) \
  case r:          \
    tile512<r, NP>(x, I, w, p, y, O, m); \
    break;
      JV_CASE(1) JV_CASE(2) JV_CASE(3) JV_CASE(4) JV_CASE(5) JV_CASE(6) JV_CASE(7) JV_CASE(8)
#undef JV_CASE
      default:
        break;
    }
    m += n;
  }
}

template <typename W>
JV_TARGET512 void panels512(const float* x, int64_t M, int64_t I, const W* w, float* y, int64_t O, int64_t p_begin,
                            int64_t p_end) {
  int64_t p = p_begin;
  for (; p + 2 <= p_end; p += 2) rows512<2>(x, M, I, w, p, y, O);
  if (p < p_end) rows512<1>(x, M, I, w, p, y, O);
}

inline bool has_avx512() { return __builtin_cpu_supports("avx512f"); }

// y = x @ W over panels [p_begin, p_end) of packed W, as packed_matmul.cc computes it: the same floats however
// the panels are split between threads (each column's sums run in the same order).
template <typename W>
inline void packed_product(const float* x, int64_t M, int64_t I, const W* w, float* y, int64_t O, int64_t p_begin,
                           int64_t p_end) {
  static const bool avx512 = has_avx512();
  if (M > 2 && avx512)
    panels512<W>(x, M, I, w, y, O, p_begin, p_end);
  else
    panels<W>(x, M, I, w, y, O, p_begin, p_end);
}

// One row of x (one stream) by weights kept row by row, [I, stride] with stride = P * 16 (the packed panels side
// by side), panels p0 .. p0+NP, over the listed rows `rows[0..n)` only (x's nonzero inputs): y[p0 * 16 ..] =
// the sums, in the same order as `tile<1, NP, W, true>`'s, so the same floats. At one stream a product's time
// is the reading of its weights; here each input's weights are one contiguous run that the L2 prefetcher
// streams, where in the packed layout they are 16 runs I * 16 apart (two 256 x 256 products alone 20.5 -> 9.5 us,
// Intel Xeon, 2026-12-03).
template <int NP, typename W>
JV_TARGET512 void row_tile512(const float* x, const W* w, int64_t stride, int64_t p0, float* y, int64_t O,
                              const int32_t* rows, int64_t n) {
  __m512 acc[NP];
  for (int p = 0; p < NP; ++p) acc[p] = _mm512_setzero_ps();
  const W* base = w + p0 * kPanel;
  for (int64_t k = 0; k < n; ++k) {
    const int64_t i = rows[k];
    const __m512 xv = _mm512_set1_ps(x[i]);
    const W* row = base + i * stride;
    for (int p = 0; p < NP; ++p) acc[p] = _mm512_fmadd_ps(xv, load16(row + p * kPanel), acc[p]);
  }
  for (int p = 0; p < NP; ++p) {
    const int64_t col = (p0 + p) * kPanel;
    const __mmask16 mask = static_cast<__mmask16>((1u << std::min<int64_t>(kPanel, O - col)) - 1u);
    _mm512_mask_storeu_ps(y + col, mask, acc[p]);
  }
}

// Panels [p_begin, p_end) of one row of x by row-kept weights (see `row_tile512`), in as few passes over the
// listed rows as the 32 registers allow: 16 panels at a time.
template <typename W>
JV_TARGET512 void listed_rows512(const float* x, const W* w, int64_t stride, int64_t p_begin, int64_t p_end,
                                 float* y, int64_t O, const int32_t* rows, int64_t n) {
  int64_t p = p_begin;
  for (; p + 16 <= p_end; p += 16) row_tile512<16, W>(x, w, stride, p, y, O, rows, n);
  for (; p + 8 <= p_end; p += 8) row_tile512<8, W>(x, w, stride, p, y, O, rows, n);
  for (; p + 4 <= p_end; p += 4) row_tile512<4, W>(x, w, stride, p, y, O, rows, n);
  for (; p < p_end; ++p) row_tile512<1, W>(x, w, stride, p, y, O, rows, n);
}

// rows[n ..) += the indices of x's nonzero entries [i, I), in order; returns the new n.
inline int64_t list_nonzero(const float* x, int64_t i, int64_t I, int32_t* rows, int64_t n) {
  for (; i < I; ++i) {
    rows[n] = static_cast<int32_t>(i);
    n += x[i] != 0.0f;
  }
  return n;
}

// rows[0 .. n) = the indices of x's nonzero entries [0, I), in order; returns n. Sixteen at a time: a compare
// to a mask and a compress of the indices it keeps (one stream's products read only the rows a ReLU left).
JV_TARGET512 inline int64_t list_nonzero512(const float* x, int64_t I, int32_t* rows) {
  const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  int64_t n = 0, i = 0;
  for (; i + 16 <= I; i += 16) {  // n <= i: the 16-wide store stays within rows[0, I)
    const __mmask16 kept = _mm512_cmp_ps_mask(_mm512_loadu_ps(x + i), _mm512_setzero_ps(), _CMP_NEQ_UQ);
    const __m512i at = _mm512_add_epi32(lanes, _mm512_set1_epi32(static_cast<int32_t>(i)));
    _mm512_storeu_si512(rows + n, _mm512_maskz_compress_epi32(kept, at));
    n += __builtin_popcount(kept);
  }
  return list_nonzero(x, i, I, rows, n);
}

inline bool has_avx2_fma() { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }

#else

inline bool has_avx2_fma() { return false; }
inline bool has_avx512() { return false; }

#endif

}  // namespace
