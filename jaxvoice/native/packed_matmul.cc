// y[M, O] = x[M, I] @ W for W packed as [ceil(O / 16), I, 16] (float32 or bfloat16 weights, float32 x, y
// and sums): the sampler's matrix-vector products, as an XLA FFI custom call for the CPU.
//
// Why: sampling one stream of a 3 x 680 LSTM reads ~38 MB of weights per step. XLA's CPU dot reads an
// [I, O] or [O, I] matrix at 33-52 GB/s at that size and, for bfloat16 weights, converts the whole matrix
// to float32 every step first. Read in 16-column panels, one after the other, the same weights stream at
// up to ~80 GB/s (float32) and ~100 GB/s (bfloat16, converted in registers) on 2 cores: inside the
// sampler's scan, 1.4x (float32) and 2.6x (bfloat16) less time per step's products than XLA's dot.
// A panel of weights is loaded once per call and reused from cache for every row of x.
//
// One or two rows (streams) use AVX2 + FMA (x86-64-v3): on Zen 4 a 512-bit FMA is two 256-bit ones, and the
// GEMV is memory bound. Three or more rows are compute-bound and use AVX-512 tiles where the CPU has it
// (32 registers: 8 rows x 32 columns of sums); voice_2016 at 16 streams then samples 1.4x faster than with
// XLA's GEMM. Without AVX2 at run time `jaxvoice_packed_matmul_isa` returns 0 and Python uses XLA's dot.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>

#include "xla/ffi/api/ffi.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define JV_X86 1
#define JV_TARGET __attribute__((target("avx2,fma")))
#else
#define JV_X86 0
#endif

namespace ffi = xla::ffi;

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
template <int MR, int NP, typename W>
JV_TARGET void tile(const float* x, int64_t I, const W* w, int64_t p0, float* y, int64_t O, int64_t m0) {
  __m256 acc[MR][NP][2];
  for (int r = 0; r < MR; ++r)
    for (int p = 0; p < NP; ++p) acc[r][p][0] = acc[r][p][1] = _mm256_setzero_ps();
  const W* panel[NP];
  for (int p = 0; p < NP; ++p) panel[p] = w + (p0 + p) * I * kPanel;
  for (int64_t i = 0; i < I; ++i) {
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
// L2 across tiles); one row at a time four panels wide, so that a single stream keeps 8 FMAs in flight.
template <typename W>
JV_TARGET void panels(const float* x, int64_t M, int64_t I, const W* w, float* y, int64_t O, int64_t p_begin,
                      int64_t p_end) {
  if (M == 1) {
    int64_t p = p_begin;
    for (; p + 4 <= p_end; p += 4) tile<1, 4>(x, I, w, p, y, O, 0);
    for (; p < p_end; ++p) tile<1, 1>(x, I, w, p, y, O, 0);
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

bool has_avx512() { return __builtin_cpu_supports("avx512f"); }

bool has_avx2_fma() { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }

#else

bool has_avx2_fma() { return false; }
bool has_avx512() { return false; }

#endif

// Work shared by the calling thread and the pool: panels are handed out in pieces by an atomic counter, so
// a pool task that starts late finds nothing left and the caller never waits for a task that has not begun.
struct Shared {
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
};

template <typename W>
ffi::Error PackedMatmul(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::AnyBuffer w,
                        ffi::ResultBuffer<ffi::F32> y) {
#if JV_X86
  auto xd = x.dimensions(), wd = w.dimensions(), yd = y->dimensions();
  if (xd.size() != 2 || wd.size() != 3 || yd.size() != 2 || wd[2] != kPanel || wd[1] != xd[1] ||
      yd[0] != xd[0] || (yd[1] + kPanel - 1) / kPanel != wd[0])
    return ffi::Error::InvalidArgument("packed_matmul: shapes must be x[M, I], w[ceil(O/16), I, 16], y[M, O]");
  constexpr ffi::DataType kWeights = sizeof(W) == 4 ? ffi::DataType::F32 : ffi::DataType::BF16;
  if (w.element_type() != kWeights)
    return ffi::Error::InvalidArgument("packed_matmul: the weights' dtype does not match the target");
  const int64_t M = xd[0], I = xd[1], O = yd[1], P = wd[0];
  const float* xp = x.typed_data();
  const W* wp = reinterpret_cast<const W*>(w.untyped_data());
  float* yp = y->typed_data();
  if (M == 0 || O == 0) return ffi::Error::Success();

  // ~8 pieces per thread: balance without much counting; at least 4 panels (64 columns) per piece.
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  // Even, so that the AVX-512 tiles' panel pairs do not straddle pieces.
  int64_t piece = std::max<int64_t>(4, (P + 8 * threads - 1) / (8 * threads));
  piece += piece & 1;
  const int64_t pieces = (P + piece - 1) / piece;
  auto shared = std::make_shared<Shared>();
  static const bool avx512 = has_avx512();
  const bool many_rows = M > 2 && avx512;
  auto work = [=] {
    for (int64_t k; (k = shared->next.fetch_add(1)) < pieces;) {
      const int64_t begin = k * piece, end = std::min(P, (k + 1) * piece);
      if (many_rows)
        panels512<W>(xp, M, I, wp, yp, O, begin, end);
      else
        panels<W>(xp, M, I, wp, yp, O, begin, end);
      shared->done.fetch_add(1, std::memory_order_release);
    }
  };
  for (int64_t t = 1; t < std::min(threads, pieces); ++t) {
    auto task = work;
    pool.Schedule(std::move(task));
  }
  work();
  while (shared->done.load(std::memory_order_acquire) < pieces) _mm_pause();
  return ffi::Error::Success();
#else
  return ffi::Error::Unimplemented("packed_matmul needs an x86-64 CPU with AVX2 and FMA");
#endif
}

}  // namespace

// Both targets take the same arguments: (x float32 [M, I], packed weights, -> y float32 [M, O]).
static auto Binding() {
  return ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::AnyBuffer>().Ret<ffi::Buffer<ffi::F32>>();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxvoicePackedMatmulF32, PackedMatmul<float>, Binding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxvoicePackedMatmulBF16, PackedMatmul<uint16_t>, Binding());

// 1 where this CPU runs the kernel (AVX2 + FMA), 0 where Python must fall back to XLA's dot.
extern "C" int jaxvoice_packed_matmul_isa() { return has_avx2_fma() ? 1 : 0; }

// 1 where products of 3+ rows use the AVX-512 tiles (then faster than XLA's dot at many streams too).
extern "C" int jaxvoice_packed_matmul_many_rows() { return has_avx2_fma() && has_avx512() ? 1 : 0; }
