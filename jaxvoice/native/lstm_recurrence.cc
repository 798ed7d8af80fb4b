// The time loops of an LSTM layer's forward and backward on the CPU, as XLA FFI custom calls: everything
// of the training step that must run step after step. The input projections and the weight gradients stay
// whole-sequence GEMMs in XLA (model.py).
//
// Why: in a `lax.scan` every step is a small GEMM ([B, H] x [H, 4H]) plus a few elementwise fusions, each a
// separate XLA op with its own dispatch and its own pass over memory; on `small` (2 x 256, B 32) the two scans
// of a layer ran at 54-72 GFLOP/s, a third of the machine. Here a step is one pass per 16 hidden units: the
// four gates' sums stay in registers from the product to the cell update (forward), or from dh to dpre
// (backward), and each thread keeps its units' weight panels in its own L2 from step to step.
//
// AVX-512 (x86-64-v4) only; elsewhere `jaxvoice_lstm_recurrence_isa` returns 0 and model.py scans in XLA.
// Results do not depend on the number of threads: each output element is computed by one thread, in a
// fixed order, so training stays bitwise reproducible on one machine.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define JV_X86 1
#define JV_TARGET __attribute__((target("avx512f")))
#else
#define JV_X86 0
#endif

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kLanes = 16;  // hidden units per panel: one 512-bit vector

#if JV_X86

// tanh as Eigen (and XLA's CPU backend) computes it: a 13/6-degree rational function on [-9, 9], accurate to a
// couple of ulp there; outside it tanh is +-1 in float32.
JV_TARGET inline __m512 tanh16(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-9.f)), _mm512_set1_ps(9.f));
  const __m512 x2 = _mm512_mul_ps(x, x);
  __m512 p = _mm512_set1_ps(-2.76076847742355e-16f);
  p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(2.00018790482477e-13f));
  p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(-8.60467152213735e-11f));
  p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(5.12229709037114e-08f));
  p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(1.48572235717979e-05f));
  p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(6.37261928875436e-04f));
  p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(4.89352455891786e-03f));
  p = _mm512_mul_ps(p, x);
  __m512 q = _mm512_set1_ps(1.19825839466702e-06f);
  q = _mm512_fmadd_ps(q, x2, _mm512_set1_ps(1.18534705686654e-04f));
  q = _mm512_fmadd_ps(q, x2, _mm512_set1_ps(2.26843463243900e-03f));
  q = _mm512_fmadd_ps(q, x2, _mm512_set1_ps(4.89352518554385e-03f));
  return _mm512_div_ps(p, q);
}

JV_TARGET inline __m512 load(__mmask16 mask, const float* p) { return _mm512_maskz_loadu_ps(mask, p); }
JV_TARGET inline void store(__mmask16 mask, float* p, __m512 v) { _mm512_mask_storeu_ps(p, mask, v); }
JV_TARGET inline __m512 half_plus_half(__m512 a) {  // sigmoid(x) = 0.5 + 0.5 tanh(x / 2)
  return _mm512_fmadd_ps(a, _mm512_set1_ps(0.5f), _mm512_set1_ps(0.5f));
}
// 0.25 (1 - a^2) for a = tanh(x / 2): d sigmoid(x)/dx = 0.5 (1 - a^2), times the 0.5 of the gate's halving
JV_TARGET inline __m512 dsigmoid(__m512 a) {
  return _mm512_mul_ps(_mm512_set1_ps(0.25f), _mm512_fnmadd_ps(a, a, _mm512_set1_ps(1.f)));
}

// What one step of one panel of 16 hidden units (col .. col+16; `mask` drops units past H) reads and writes.
// Rows are [B, H] or [B, 4H] arrays of the step.
struct ForwardStep {
  const float *h_prev, *c_prev;
  const float* w;                   // the units' panel of Wh, [4, H, 16]
  const float *table, *bias;        // input projections [R, 4H] and the bias [4H]
  const int32_t* index;             // the step's B rows of the table
  float *h, *c, *a;                 // outputs: h, c and the gates' tanh [B, 4H]
  int64_t H, col;
  __mmask16 mask;
};

// Forward, rows row0 .. row0+R: pre-activations = (table[index[row]] + bias) + h_prev @ Wh for the four gates,
// then a = tanh(pre * [.5, .5, .5, 1]) and the cell update, all in registers.
template <int R>
JV_TARGET void forward_tile(int64_t row0, const ForwardStep& p) {
  const int64_t H = p.H, G = 4 * H, col = p.col;
  const __mmask16 mask = p.mask;
  __m512 acc[4][R];
  for (int q = 0; q < 4; ++q)
    for (int r = 0; r < R; ++r) acc[q][r] = _mm512_setzero_ps();
  const float *x = p.h_prev + row0 * H, *w = p.w;
  for (int64_t k = 0; k < H; ++k) {
    const __m512 w0 = _mm512_loadu_ps(w + k * kLanes), w1 = _mm512_loadu_ps(w + (H + k) * kLanes),
                 w2 = _mm512_loadu_ps(w + (2 * H + k) * kLanes), w3 = _mm512_loadu_ps(w + (3 * H + k) * kLanes);
    for (int r = 0; r < R; ++r) {
      const __m512 xv = _mm512_set1_ps(x[r * H + k]);
      acc[0][r] = _mm512_fmadd_ps(xv, w0, acc[0][r]);
      acc[1][r] = _mm512_fmadd_ps(xv, w1, acc[1][r]);
      acc[2][r] = _mm512_fmadd_ps(xv, w2, acc[2][r]);
      acc[3][r] = _mm512_fmadd_ps(xv, w3, acc[3][r]);
    }
  }
  const __m512 half = _mm512_set1_ps(0.5f);
  for (int r = 0; r < R; ++r) {
    const int64_t g = (row0 + r) * G + col, u = (row0 + r) * H + col;
    const float* pre = p.table + static_cast<int64_t>(p.index[row0 + r]) * G + col;
    __m512 gate[4];
    for (int q = 0; q < 4; ++q) {
      const __m512 s = _mm512_add_ps(_mm512_add_ps(load(mask, pre + q * H), load(mask, p.bias + col + q * H)),
                                     acc[q][r]);
      gate[q] = tanh16(q < 3 ? _mm512_mul_ps(s, half) : s);
      store(mask, p.a + g + q * H, gate[q]);
    }
    const __m512 cn = _mm512_fmadd_ps(half_plus_half(gate[1]), load(mask, p.c_prev + u),
                                      _mm512_mul_ps(half_plus_half(gate[0]), gate[3]));
    store(mask, p.c + u, cn);
    store(mask, p.h + u, _mm512_mul_ps(half_plus_half(gate[2]), tanh16(cn)));
  }
}

struct BackwardStep {
  const float* dpre_next;           // dpre of the step after (null at the last step: dh_last instead)
  const float* w;                   // the units' panel of Wh^T, [4H, 16]
  const float *dh_last, *dc_last;   // dh_T, dc_T
  const float* dh_out_grad;         // the gradient of the step's output h
  const float *a, *c, *c_prev;      // the forward's gates and cells
  float* dc_carry;                  // dc, carried from step to step
  float* dpre;                      // output (null at the extra step that only computes dh_0)
  float* dh_out;                    // dh_0, at the extra step
  float* db;                        // sum of dpre over steps and rows [4H]
  float* dtable;                    // sum of dpre by table row [R, 4H] (null: not wanted)
  const int32_t* index;             // the step's B rows of the table
  int64_t H, col;
  __mmask16 mask;
};

// Backward, rows row0 .. row0+R of step t. dh = dpre[t+1] @ Wh^T (or dh_T at the last step) + the output's
// gradient; dc = dc carried (or dc_T) + dh * p; dpre[t] = [dc, dc, dh, dc] * k; the carried dc becomes dc * f,
// where k, p and f come from the forward's gates a[t] and cells c[t], c[t-1] (model.py's scan path computes the
// same factors for all steps at once). dpre is also summed into db and, by table row, into dtable: the input
// projection's gradients, without another pass over dpre. With `dpre` null only the product is stored, into
// `dh_out` (dh_0 after the first step).
template <int R>
JV_TARGET void backward_tile(int64_t row0, const BackwardStep& p) {
  const int64_t H = p.H, G = 4 * H, col = p.col;
  const __mmask16 mask = p.mask;
  __m512 acc[R];
  if (p.dpre_next != nullptr) {
    for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
    const float* x = p.dpre_next + row0 * G;
    for (int64_t i = 0; i < G; ++i) {
      const __m512 wv = _mm512_loadu_ps(p.w + i * kLanes);
      for (int r = 0; r < R; ++r) acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(x[r * G + i]), wv, acc[r]);
    }
  } else {
    for (int r = 0; r < R; ++r) acc[r] = load(mask, p.dh_last + (row0 + r) * H + col);
  }
  if (p.dpre == nullptr) {
    for (int r = 0; r < R; ++r) store(mask, p.dh_out + (row0 + r) * H + col, acc[r]);
    return;
  }
  const __m512 one = _mm512_set1_ps(1.f);
  __m512 db[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
  for (int r = 0; r < R; ++r) {
    const int64_t g = (row0 + r) * G + col, u = (row0 + r) * H + col;
    const __m512 ai = load(mask, p.a + g), af = load(mask, p.a + g + H), ao = load(mask, p.a + g + 2 * H),
                 ag = load(mask, p.a + g + 3 * H);
    const __m512 tc = tanh16(load(mask, p.c + u));
    const __m512 pc = _mm512_mul_ps(half_plus_half(ao), _mm512_fnmadd_ps(tc, tc, one));
    const __m512 dh = _mm512_add_ps(acc[r], load(mask, p.dh_out_grad + u));
    const __m512 dc_in = load(mask, (p.dpre_next != nullptr ? p.dc_carry : p.dc_last) + u);
    const __m512 dc = _mm512_fmadd_ps(dh, pc, dc_in);
    const __m512 d[4] = {
        _mm512_mul_ps(dc, _mm512_mul_ps(ag, dsigmoid(ai))),
        _mm512_mul_ps(dc, _mm512_mul_ps(load(mask, p.c_prev + u), dsigmoid(af))),
        _mm512_mul_ps(dh, _mm512_mul_ps(tc, dsigmoid(ao))),
        _mm512_mul_ps(dc, _mm512_mul_ps(half_plus_half(ai), _mm512_fnmadd_ps(ag, ag, one))),
    };
    float* dtable_row = p.dtable == nullptr ? nullptr : p.dtable + static_cast<int64_t>(p.index[row0 + r]) * G + col;
    for (int q = 0; q < 4; ++q) {
      store(mask, p.dpre + g + q * H, d[q]);
      db[q] = _mm512_add_ps(db[q], d[q]);
      if (dtable_row != nullptr)
        store(mask, dtable_row + q * H, _mm512_add_ps(load(mask, dtable_row + q * H), d[q]));
    }
    store(mask, p.dc_carry + u, _mm512_mul_ps(dc, half_plus_half(af)));
  }
  for (int q = 0; q < 4; ++q)
    store(mask, p.db + col + q * H, _mm512_add_ps(load(mask, p.db + col + q * H), db[q]));
}

// Rows in tiles of up to R_MAX (the forward's 4 x 6 sums, the backward's 12, fit in the 32 registers), as
// even as possible: 50 rows as 12+12+12+12+2 would leave the last tile's few FMA chains waiting on their own
// latency for a whole pass over the weights; 10+10+10+10+10 keeps every pass busy.
template <template <int> class Tile, int R_MAX, typename Step>
JV_TARGET void rows(int64_t B, const Step& step) {
  const int64_t tiles = (B + R_MAX - 1) / R_MAX;
  for (int64_t i = 0, row0 = 0; i < tiles; ++i) {
    const int64_t n = B / tiles + (i < B % tiles ? 1 : 0);
    switch (n) {
#define JV_CASE(r)                                       \
  case r:                                                \
    if constexpr (r <= R_MAX) Tile<r>::run(row0, step);    \
    break;
      JV_CASE(1) JV_CASE(2) JV_CASE(3) JV_CASE(4) JV_CASE(5) JV_CASE(6)
      JV_CASE(7) JV_CASE(8) JV_CASE(9) JV_CASE(10) JV_CASE(11) JV_CASE(12)
#undef JV_CASE
      default:
        break;
    }
    row0 += n;
  }
}

template <int R>
struct ForwardTile {
  JV_TARGET static void run(int64_t row0, const ForwardStep& p) { forward_tile<R>(row0, p); }
};

template <int R>
struct BackwardTile {
  JV_TARGET static void run(int64_t row0, const BackwardStep& p) { backward_tile<R>(row0, p); }
};

bool has_avx512() { return __builtin_cpu_supports("avx512f"); }

inline __mmask16 lanes_mask(int64_t H, int64_t col) {
  const int64_t n = std::min<int64_t>(kLanes, H - col);
  return static_cast<__mmask16>((1u << n) - 1u);
}

// The weight panels, packed by the thread that will read them, at its first step (so they start in its own
// cache; XLA's transposes for the same took 0.3-0.5 ms each and a buffer on `small`). Units past H are zero.
// Forward panel of units col .. col+16: [4, H, 16], gate q's row k = Wh[k, qH + col .. qH + col + 16].
JV_TARGET void pack_forward_panel(const float* wh, float* panel, int64_t H, int64_t col) {
  const __mmask16 mask = lanes_mask(H, col);
  for (int64_t q = 0; q < 4; ++q)
    for (int64_t k = 0; k < H; ++k)
      _mm512_storeu_ps(panel + (q * H + k) * kLanes, load(mask, wh + k * 4 * H + q * H + col));
}

// Rows of a [rows, 4H] array, the four gates' columns of units col .. col+16: zero.
JV_TARGET void zero_gate_units(float* dst, int64_t rows, int64_t H, int64_t col) {
  const __mmask16 mask = lanes_mask(H, col);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t q = 0; q < 4; ++q) store(mask, dst + r * 4 * H + q * H + col, _mm512_setzero_ps());
}

// Backward panel of units col .. col+16: [4H, 16], row i = Wh[col .. col+16, i] (Wh^T's columns of the units).
void pack_backward_panel(const float* wh, float* panel, int64_t H, int64_t col) {
  const int64_t G = 4 * H, n = std::min<int64_t>(kLanes, H - col);
  for (int64_t i = 0; i < G; ++i)
    for (int64_t l = 0; l < kLanes; ++l) panel[i * kLanes + l] = l < n ? wh[(col + l) * G + i] : 0.f;
}

#else

bool has_avx512() { return false; }

#endif

// Steps run one after the other; within a step the units are split in `pieces` (one per thread), and a step
// starts only when every piece of the step before has finished. Each participant first claims its own
// piece, then any piece nobody has claimed: a pool thread that starts late (or never) only means the caller
// does more, never that anyone waits for work that has not begun. The claims live in `Steps`, owned by a
// shared_ptr, so a pool task that runs after the call returned only sees finished claims and leaves.
struct Steps {
  explicit Steps(int64_t pieces) : claimed(new std::atomic<int64_t>[pieces]) {
    for (int64_t q = 0; q < pieces; ++q) claimed[q].store(0);
  }
  std::unique_ptr<std::atomic<int64_t>[]> claimed;  // the next step of each piece not yet claimed
  std::atomic<int64_t> done{0};                     // pieces finished, over all steps
};

inline void wait_until(const std::atomic<int64_t>& counter, int64_t value) {
  for (int spins = 0; counter.load(std::memory_order_acquire) < value; ++spins) {
#if JV_X86
    _mm_pause();
#endif
    if (spins > 4096) std::this_thread::yield();  // a descheduled peer: let it run
  }
}

template <typename Body>
void run_steps(ffi::ThreadPool& pool, int64_t steps, int64_t pieces, Body body) {
  auto state = std::make_shared<Steps>(pieces);
  auto participate = [state, steps, pieces, body](int64_t first) {
    for (int64_t s = state->done.load(std::memory_order_acquire) / pieces; s < steps; ++s) {
      wait_until(state->done, s * pieces);
      for (int64_t n = 0; n < pieces; ++n) {
        const int64_t q = (first + n) % pieces;
        int64_t expected = s;
        if (state->claimed[q].compare_exchange_strong(expected, s + 1)) {
          body(s, q);
          state->done.fetch_add(1, std::memory_order_release);
        }
      }
    }
  };
  for (int64_t t = 1; t < pieces; ++t) pool.Schedule([participate, t] { participate(t); });
  participate(0);
  wait_until(state->done, steps * pieces);
}

// Units are split in whole panels of 16, as evenly as the panels allow, one piece per pool thread.
struct Split {
  int64_t panels, pieces;
  int64_t begin(int64_t q) const { return q * panels / pieces; }
};

Split split_units(ffi::ThreadPool& pool, int64_t H) {
  const int64_t panels = (H + kLanes - 1) / kLanes;
  return {panels, std::clamp<int64_t>(pool.num_threads(), 1, panels)};
}

// 64-byte aligned floats (the panels are read in whole cache lines), freed when the call returns.
struct Panels {
  explicit Panels(int64_t count)
      : data(static_cast<float*>(std::aligned_alloc(64, ((count * sizeof(float) + 63) / 64) * 64))) {}
  ~Panels() { std::free(data); }
  float* data;
};

ffi::Error LstmForward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> table, ffi::Buffer<ffi::S32> index,
                       ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> wh, ffi::Buffer<ffi::F32> h0,
                       ffi::Buffer<ffi::F32> c0, ffi::ResultBuffer<ffi::F32> hs, ffi::ResultBuffer<ffi::F32> cs,
                       ffi::ResultBuffer<ffi::F32> a) {
#if JV_X86
  auto td = table.dimensions(), id = index.dimensions(), wd = wh.dimensions(), hd = h0.dimensions();
  if (td.size() != 2 || id.size() != 2 || wd.size() != 2 || hd.size() != 2)
    return ffi::Error::InvalidArgument(
        "lstm_forward: expected table[R, 4H], index[T, B], bias[4H], wh[H, 4H], h0[B, H], c0[B, H]");
  const int64_t T = id[0], B = id[1], H = hd[1], R = td[0];
  const int64_t G = 4 * H;
  if (td[1] != G || hd[0] != B || wd[0] != H || wd[1] != G || bias.element_count() != size_t(G) ||
      c0.element_count() != size_t(B * H))
    return ffi::Error::InvalidArgument("lstm_forward: shapes do not agree");
  const int32_t* index_p = index.typed_data();
  for (int64_t n = 0; n < T * B; ++n)
    if (index_p[n] < 0 || index_p[n] >= R) return ffi::Error::InvalidArgument("lstm_forward: index out of range");
  const float *table_p = table.typed_data(), *bias_p = bias.typed_data(), *wh_p = wh.typed_data(),
              *h0_p = h0.typed_data(), *c0_p = c0.typed_data();
  float *hs_p = hs->typed_data(), *cs_p = cs->typed_data(), *a_p = a->typed_data();
  const Split units = split_units(pool, H);
  const int64_t panel_size = 4 * H * kLanes;
  Panels packed(units.panels * panel_size);
  float* w_p = packed.data;
  run_steps(pool, T, units.pieces, [=](int64_t t, int64_t q) {
    if (t == 0)
      for (int64_t panel = units.begin(q); panel < units.begin(q + 1); ++panel)
        pack_forward_panel(wh_p, w_p + panel * panel_size, H, panel * kLanes);
    for (int64_t panel = units.begin(q); panel < units.begin(q + 1); ++panel) {
      const int64_t col = panel * kLanes;
      const ForwardStep step{t == 0 ? h0_p : hs_p + (t - 1) * B * H,
                             t == 0 ? c0_p : cs_p + (t - 1) * B * H,
                             w_p + panel * panel_size,
                             table_p,
                             bias_p,
                             index_p + t * B,
                             hs_p + t * B * H,
                             cs_p + t * B * H,
                             a_p + t * B * G,
                             H,
                             col,
                             lanes_mask(H, col)};
      rows<ForwardTile, 6>(B, step);
    }
  });
  return ffi::Error::Success();
#else
  return ffi::Error::Unimplemented("lstm_forward needs an x86-64 CPU with AVX-512");
#endif
}

ffi::Error LstmBackward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> cs,
                        ffi::Buffer<ffi::F32> c0, ffi::Buffer<ffi::F32> dhs, ffi::Buffer<ffi::F32> wh,
                        ffi::Buffer<ffi::F32> dh_last, ffi::Buffer<ffi::F32> dc_last, ffi::Buffer<ffi::S32> index,
                        ffi::ResultBuffer<ffi::F32> dpre, ffi::ResultBuffer<ffi::F32> dh0,
                        ffi::ResultBuffer<ffi::F32> dc0, ffi::ResultBuffer<ffi::F32> db,
                        ffi::ResultBuffer<ffi::F32> dtable) {
#if JV_X86
  auto ad = a.dimensions(), wd = wh.dimensions(), hd = dh_last.dimensions(), dtd = dtable->dimensions();
  if (ad.size() != 3 || wd.size() != 2 || hd.size() != 2 || dtd.size() != 2)
    return ffi::Error::InvalidArgument(
        "lstm_backward: expected a[T, B, 4H], wh[H, 4H], dh[B, H], dtable[R, 4H] (R may be 0)");
  const int64_t T = ad[0], B = ad[1], H = hd[1], R = dtd[0];
  const int64_t G = 4 * H;
  const size_t steps_BxH = T * B * H, BxH = B * H;
  if (ad[2] != G || hd[0] != B || wd[0] != H || wd[1] != G || dtd[1] != G || cs.element_count() != steps_BxH ||
      dhs.element_count() != steps_BxH || c0.element_count() != BxH || dc_last.element_count() != BxH ||
      db->element_count() != size_t(G) || (R > 0 && index.element_count() != size_t(T * B)))
    return ffi::Error::InvalidArgument("lstm_backward: shapes do not agree");
  const int32_t* index_p = index.typed_data();
  if (R > 0)
    for (int64_t n = 0; n < T * B; ++n)
      if (index_p[n] < 0 || index_p[n] >= R) return ffi::Error::InvalidArgument("lstm_backward: index out of range");
  const float *a_p = a.typed_data(), *cs_p = cs.typed_data(), *c0_p = c0.typed_data(), *dhs_p = dhs.typed_data(),
              *wh_p = wh.typed_data(), *dh_last_p = dh_last.typed_data(), *dc_last_p = dc_last.typed_data();
  float *dpre_p = dpre->typed_data(), *dh0_p = dh0->typed_data(), *dc0_p = dc0->typed_data(), *db_p = db->typed_data(),
        *dtable_p = R > 0 ? dtable->typed_data() : nullptr;
  const Split units = split_units(pool, H);
  const int64_t panel_size = G * kLanes;
  Panels packed(units.panels * panel_size);
  float* w_p = packed.data;
  // Step s handles time T-1-s; the extra step s = T only multiplies dpre[0] by Wh^T for dh_0. dc0 is the
  // carried dc throughout, so that its final value needs no copy.
  run_steps(pool, T + 1, units.pieces, [=](int64_t s, int64_t q) {
    if (s == 0)  // the piece's panels of Wh^T, and zeros in its columns of the sums
      for (int64_t panel = units.begin(q); panel < units.begin(q + 1); ++panel) {
        const int64_t col = panel * kLanes;
        pack_backward_panel(wh_p, w_p + panel * panel_size, H, col);
        zero_gate_units(db_p, 1, H, col);
        if (dtable_p != nullptr) zero_gate_units(dtable_p, R, H, col);
      }
    const int64_t t = T - 1 - s;
    const bool last = s == 0, first = s == T;
    const size_t step_BxH = first ? 0 : t * B * H, step_BxG = first ? 0 : t * B * G;
    for (int64_t panel = units.begin(q); panel < units.begin(q + 1); ++panel) {
      const int64_t col = panel * kLanes;
      const BackwardStep step{last ? nullptr : dpre_p + (t + 1) * B * G,
                              w_p + panel * panel_size,
                              dh_last_p,
                              dc_last_p,
                              dhs_p + step_BxH,
                              a_p + step_BxG,
                              cs_p + step_BxH,
                              t > 0 ? cs_p + (t - 1) * B * H : c0_p,
                              dc0_p,
                              first ? nullptr : dpre_p + step_BxG,
                              dh0_p,
                              db_p,
                              dtable_p,
                              first ? nullptr : index_p + t * B,
                              H,
                              col,
                              lanes_mask(H, col)};
      rows<BackwardTile, 12>(B, step);
    }
  });
  return ffi::Error::Success();
#else
  return ffi::Error::Unimplemented("lstm_backward needs an x86-64 CPU with AVX-512");
#endif
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxvoiceLstmForward, LstmForward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // table [R, 4H]: input projections
                                  .Arg<ffi::Buffer<ffi::S32>>()  // index [T, B]: each step's rows of the table
                                  .Arg<ffi::Buffer<ffi::F32>>()  // bias [4H]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // Wh [H, 4H]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // h0 [B, H]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // c0 [B, H]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // hs [T, B, H]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // cs [T, B, H]
                                  .Ret<ffi::Buffer<ffi::F32>>());  // a [T, B, 4H]: tanh of the halved i, f, o and g

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxvoiceLstmBackward, LstmBackward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // a [T, B, 4H]: the forward's gates
                                  .Arg<ffi::Buffer<ffi::F32>>()  // cs [T, B, H]: the forward's cells
                                  .Arg<ffi::Buffer<ffi::F32>>()  // c0 [B, H]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dhs [T, B, H]: gradient of the outputs
                                  .Arg<ffi::Buffer<ffi::F32>>()  // Wh [H, 4H]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dh_T [B, H]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dc_T [B, H]
                                  .Arg<ffi::Buffer<ffi::S32>>()  // index [T, B] of the forward (read if R > 0)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dpre [T, B, 4H]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dh0 [B, H]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dc0 [B, H]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // db [4H]: dpre summed over steps and rows
                                  .Ret<ffi::Buffer<ffi::F32>>());  // dtable [R, 4H]: dpre summed by table row

// 1 where this CPU runs the kernels (AVX-512F), 0 where Python must scan in XLA.
extern "C" int jaxvoice_lstm_recurrence_isa() { return has_avx512() ? 1 : 0; }
