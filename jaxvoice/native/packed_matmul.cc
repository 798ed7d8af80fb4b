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

#include "packed_tiles.h"

namespace ffi = xla::ffi;

namespace {

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
  auto work = [=] {
    for (int64_t k; (k = shared->next.fetch_add(1)) < pieces;) {
      packed_product<W>(xp, M, I, wp, yp, O, k * piece, std::min(P, (k + 1) * piece));
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
  return ffi::Ffi::Bind()
      .Ctx<ffi::ThreadPool>()
      .Arg<ffi::Buffer<ffi::F32>>()   // x [M, I]
      .Arg<ffi::AnyBuffer>()          // packed weights [ceil(O / 16), I, 16]
      .Ret<ffi::Buffer<ffi::F32>>();  // y [M, O]
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxvoicePackedMatmulF32, PackedMatmul<float>, Binding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxvoicePackedMatmulBF16, PackedMatmul<uint16_t>, Binding());

// 1 where this CPU runs the kernel (AVX2 + FMA), 0 where Python must fall back to XLA's dot.
extern "C" int jaxvoice_packed_matmul_isa() { return has_avx2_fma() ? 1 : 0; }

// 1 where products of 3+ rows use the AVX-512 tiles (then faster than XLA's dot at many streams too).
extern "C" int jaxvoice_packed_matmul_many_rows() { return has_avx2_fma() && has_avx512() ? 1 : 0; }
