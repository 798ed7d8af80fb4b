// The sample level of one frame of a tiered model (jaxvoice/sample_level.py's MLP), all F samples of it in
// one XLA FFI custom call for the CPU: per sample, the first layer as a sum of F table rows (one per window
// position) plus the bias and the frame tier's conditioning, the hidden and output layers as packed-panel
// products (packed_tiles.h), and the draw of the next symbol from its logits by the sampler's own rule
// (jaxvoice/sample.py `choose` without top-k/p).
//
// Why: in XLA the same sample is ~17 dispatched ops (gather, row sum, two products, bias and ReLU, the
// draw's max, exp, cumsum and count), a floor of ~2-3 us per sample whatever the widths; here the frame is
// one call. The products are split by columns between the calling thread and one pool thread, each keeping
// its half of the weights in its own core's cache; they meet at a spin barrier after each product, and both
// compute the first layer and the draw themselves (cheap) so that they need no other meeting. The pool
// thread joins whenever it starts, at a sample boundary: the caller never waits for it to begin. At one stream
// it is asked only where that has been faster (`ThreadChoice`).
//
// The pool thread first computes a product the next frame will need and that does not wait on this frame's
// samples, where the call is given one ("ahead": the frame tier's recurrent products h W_h, see
// jaxvoice/tiered.py), while the caller draws the samples; the caller computes it itself at the end if the pool
// thread has not come. In XLA the same product, between the frame's other steps, cost ~50 us a frame of
// ~230 where its weights alone take ~15 us to read (an Intel Xeon VM, 2026-12-03): here each core keeps its
// own weights in its cache.
//
// Its work done, the pool thread stays until the call ends: a pool thread that returns early is asleep by the
// time the frame's last sample is drawn, and the next call (and the products between) then wait for it to
// wake. Staying, a trained `voice_cpu_tiered` frame's call asked for it in 0.55 us, not 2.5, and drew its
// samples in 40.9 us, not 45.9 (AMD EPYC Zen 4, 2026-12-05, docs/performance.md).
//
// Where the model has a sample history with gains (jaxvoice/sample_history.py), the call also adds it to the
// first layer's conditioning: it is given each position's sums over its older values and continues them
// over the last frame's samples, and the pool thread computes the next frame's older sums while the caller
// draws (in XLA the history's windows and small products made a trained `voice_cpu_tiered` frame 1.08-1.13x
// slower, AMD EPYC Zen 4, 2026-12-05). Each position's conditioning is written by whichever thread comes to
// it first, and the pool thread takes all that the caller has not as soon as it starts: the caller draws its
// first sample after one position's, not all F (~4.5 us a frame; trained, 1.06-1.10x faster, Zen 4,
// 2026-12-05).
//
// The conditioning may come as the frame tier's upsampled vector (one for the frame, or one per position)
// and each position's bias (`tiered_maps.upsampled`), which the call adds as it reaches the position: XLA
// then need not write their [F, C * D] sum each frame (a trained frame 1.05-1.06x faster, Zen 4, 2026-12-05).

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

#include "packed_tiles.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kSymbols = 256;  // V: the sampler's alphabet

#if JV_X86

JV_TARGET inline __m256 fmadd(__m256 a, __m256 b, float c) {
  return _mm256_fmadd_ps(a, b, _mm256_set1_ps(c));
}

// exp(x) for x <= 0 (the draw's scaled logit minus the largest), as Cephes' expf: 2^n p(r), r = x - n ln 2;
// below -87 (e^-87 ~ 1e-38) it is clamped there, not flushed to 0.
JV_TARGET inline __m256 exp8(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = fmadd(p, r, 1.3981999507e-3f);
  p = fmadd(p, r, 8.3334519073e-3f);
  p = fmadd(p, r, 4.1665795894e-2f);
  p = fmadd(p, r, 1.6666665459e-1f);
  p = fmadd(p, r, 5.0000001201e-1f);
  const __m256 y = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

JV_TARGET inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

JV_TARGET inline float hmax8(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)));
}

// The next symbol from one row of logits [256]: with temperature t > 0, the first symbol whose cumulative
// exp((l / t) - max) exceeds u times their total (the last one if rounding leaves none); with t == 0 the
// most probable (the first of equals). `e` is scratch [256].
JV_TARGET int32_t draw(const float* logits, float u, float t, float* e) {
  if (t == 0.0f) {
    int32_t best = 0;
    for (int32_t v = 1; v < kSymbols; ++v)
      if (logits[v] > logits[best]) best = v;
    return best;
  }
  const __m256 tv = _mm256_set1_ps(t);
  const bool scaled = t != 1.0f;  // l / 1 is l: the divisions (~160 of a sample's ~7,000 cycles) skipped
  __m256 mv = _mm256_set1_ps(-INFINITY);
  for (int64_t v = 0; v < kSymbols; v += 8) {
    const __m256 l = _mm256_loadu_ps(logits + v);
    const __m256 s = scaled ? _mm256_div_ps(l, tv) : l;
    _mm256_storeu_ps(e + v, s);
    mv = _mm256_max_ps(mv, s);
  }
  const __m256 m = _mm256_set1_ps(hmax8(mv));
  // blocks of 16: their sums find the block where the cumulative sum crosses u * total, then it is walked
  constexpr int kBlock = 16, kBlocks = kSymbols / kBlock;
  float block_sum[kBlocks];
  float total = 0.0f;
  for (int k = 0; k < kBlocks; ++k) {
    const __m256 a = exp8(_mm256_sub_ps(_mm256_loadu_ps(e + k * kBlock), m));
    const __m256 b = exp8(_mm256_sub_ps(_mm256_loadu_ps(e + k * kBlock + 8), m));
    _mm256_storeu_ps(e + k * kBlock, a);
    _mm256_storeu_ps(e + k * kBlock + 8, b);
    block_sum[k] = hsum8(_mm256_add_ps(a, b));
    total += block_sum[k];
  }
  const float target = u * total;
  float cumulative = 0.0f;
  for (int k = 0; k < kBlocks; ++k) {
    if (cumulative + block_sum[k] > target) {
      for (int j = 0; j < kBlock; ++j) {
        cumulative += e[k * kBlock + j];
        if (cumulative > target) return k * kBlock + j;
      }
      return k * kBlock + kBlock - 1;  // the block's own order of sums fell just short: its last symbol
    }
    cumulative += block_sum[k];
  }
  return kSymbols - 1;
}

// x[0, D) = ReLU(in_b + c + the table row of each window position's symbol) with AVX-512: blocks of 128 inputs
// kept in registers while the F rows are added, where the AVX2 loop in `run` loads and stores x once a row
// (the same sums in the same order; the kernel alone 5.4-6.5 -> 5.1-5.4 us a sample, `voice_cpu_tiered`, Intel
// Xeon, 2026-12-03). `rows` is scratch [F].
JV_TARGET512 void first_layer512(float* x, const float* in_b, const float* c, const float* tables,
                                 const int32_t* window, int64_t F, int64_t D, const float** rows) {
  constexpr int kBlock = 8;  // zmm registers of sums
  for (int64_t j = 0; j < F; ++j) {
    const int32_t symbol = std::min<int32_t>(std::max<int32_t>(window[j], 0), kSymbols - 1);
    rows[j] = tables + (j * kSymbols + symbol) * D;
  }
  int64_t d = 0;
  for (; d + 16 * kBlock <= D; d += 16 * kBlock) {
    __m512 sum[kBlock];
    for (int k = 0; k < kBlock; ++k)
      sum[k] = _mm512_add_ps(_mm512_loadu_ps(in_b + d + 16 * k), _mm512_loadu_ps(c + d + 16 * k));
    for (int64_t j = 0; j < F; ++j)
      for (int k = 0; k < kBlock; ++k) sum[k] = _mm512_add_ps(sum[k], _mm512_loadu_ps(rows[j] + d + 16 * k));
    for (int k = 0; k < kBlock; ++k) _mm512_storeu_ps(x + d + 16 * k, _mm512_max_ps(sum[k], _mm512_setzero_ps()));
  }
  for (; d < D; ++d) {
    float v = in_b[d] + c[d];
    for (int64_t j = 0; j < F; ++j) v += rows[j][d];
    x[d] = std::max(v, 0.0f);
  }
}

// A spin-wait's turn: a pause, and after a couple of thousand of them (tens of us) the CPU given up each
// turn, so that a partner thread the OS has descheduled (more busy threads than cores) can run rather than
// wait out a time slice.
inline void idle(int& turns) {
  if (++turns < 2000)
    _mm_pause();
  else
    std::this_thread::yield();
}

// Two threads meeting after each product: the last to arrive starts the next generation.
struct Barrier {
  std::atomic<int> arrived{0};
  std::atomic<int> generation{0};

  void wait(int& passed) {
    if (arrived.fetch_add(1, std::memory_order_acq_rel) == 1) {
      arrived.store(0, std::memory_order_relaxed);
      generation.store(passed + 1, std::memory_order_release);
    } else {
      for (int turns = 0; generation.load(std::memory_order_acquire) == passed;) idle(turns);
    }
    ++passed;
  }
};

// Whether a one-stream frame takes the pool thread. At one stream a sample's products are small and the two
// threads meet twice a sample, which on some machines costs more than the half of the products it saves (an
// Intel Xeon VM, 2026-12-03: ~0.65 us a meeting, the preset's frames ~15% faster alone; a Zen 5, 2026-11-30:
// 1.78x faster with it). So the calls time themselves: each way's time per sample as a moving average, the
// faster way taken and the other tried every 32nd call. Either way computes the same floats (the threads
// split each product by its columns), so the choice changes only the speed.
class ThreadChoice {
 public:
  bool helper(int64_t sizes) {
    if (sizes_.exchange(sizes, std::memory_order_relaxed) != sizes) {  // another model or dtype: start again
      ns_[0].store(0.0, std::memory_order_relaxed);
      ns_[1].store(0.0, std::memory_order_relaxed);
    }
    const double alone = ns_[0].load(std::memory_order_relaxed), helped = ns_[1].load(std::memory_order_relaxed);
    if (alone == 0.0 || helped == 0.0) return alone != 0.0;  // each way tried once first
    const bool faster = helped < alone;
    return calls_.fetch_add(1, std::memory_order_relaxed) % 32 == 31 ? !faster : faster;
  }
  void record(bool helped, double ns_per_sample) {
    std::atomic<double>& average = ns_[helped ? 1 : 0];
    const double old = average.load(std::memory_order_relaxed);
    average.store(old == 0.0 ? ns_per_sample : 0.9 * old + 0.1 * ns_per_sample, std::memory_order_relaxed);
  }

 private:
  std::atomic<int64_t> sizes_{-1};
  std::atomic<double> ns_[2] = {0.0, 0.0};
  std::atomic<uint64_t> calls_{0};
};

ThreadChoice one_stream_threads;

struct Sizes {
  int64_t B, F, D, L;  // streams, frame size, sample_size, hidden layers after the first
  int64_t C;  // the layers conditioned (cond's D each): the first, or every one (L + 1)
};

// What the two threads share: the products' outputs, the barrier, and the pool thread's joining.
struct Shared {
  explicit Shared(const Sizes& s)
      : hidden(s.L * s.B * s.D), logits(2 * s.B * kSymbols), position_done(new std::atomic<int>[s.F]) {
    for (int64_t t = 0; t < s.F; ++t) position_done[t].store(0, std::memory_order_relaxed);
  }
  std::vector<float> hidden;  // [L, B, D]: each hidden layer's output
  // [2, B, 256]: a sample's logits, in turns, so that one thread's next sample can write them while the
  // other still draws from this one's (with no hidden layer, no meeting comes between)
  std::vector<float> logits;
  Barrier barrier;
  std::atomic<int> state{0};   // 0: the pool thread has not come; 1: it has; 2: the call is over
  std::atomic<bool> joinable{false};  // the pool thread has done the product ahead and waits to join
  std::atomic<int> start{-1};  // the sample the pool thread joins at (F: none left)
  std::atomic<int> helper_done{0};
  std::atomic<bool> over{false};  // the caller has seen helper_done: the pool thread may return
  std::vector<float> first_cond;  // [B, F, D]: the first layer's conditioning with the history's added
  std::atomic<int> position_next{0};  // the next position whose first_cond no thread has claimed
  std::unique_ptr<std::atomic<int>[]> position_done;  // [F]: its first_cond is written
};

template <typename W>
struct Frame {
  Sizes s;
  const int32_t* window;  // [B, F]: the inputs up to the frame's first sample, the newest last
  const float *cond, *u, *tables, *in_b;  // [B, G, C * D] (G = F or 1), [F, B], [F, 256, D], [D]
  float temperature;
  std::vector<const W*> hidden_w;  // L x [ceil(D / 16), D, 16]
  const W* hidden_rows;  // [L, D, ceil(D / 16) * 16]: the same weights row by row (one stream, AVX-512), or null
  const float* hidden_b;  // [L, D]
  const W* out_w;  // [16, D, 16]
  const W* out_rows;  // [D, 256], or null
  const float* out_b;  // [256]
  int32_t* tokens;  // [B, F]
  float* logits;  // [B, F, 256]
  int64_t ahead_in, ahead_out;  // H, G of the product ahead
  const float* ahead_x;  // [A, B, H]
  std::vector<const W*> ahead_w;  // A x [ceil(G / 16), H, 16] (A = 0: no product ahead)
  float* ahead_y;  // [A, B, G] = x @ w, layer by layer
  // The sample history's Q channels (jaxvoice/sample_history.py; Q = 0: none here). A position's channels
  // are its W values before its window times the filters w [W, Q]: all but the newest F - 1 of them are
  // known a frame earlier, so each call is given this frame's sums over those ("old", computed by the
  // previous call or by XLA) and computes the next frame's on the pool thread while the samples are drawn.
  int64_t hist_W, hist_Q;
  const float* hist_old;  // [B, F, Q]
  const float* hist_values;  // [B, W]: the window's last W values in [-2, 2] (the next frame's older ones)
  const float* hist_gain;  // [B, Q]: this frame's gain of each channel
  const W* hist_w;  // [ceil(Q / 16), W, 16]: the filters, packed
  const W* hist_out;  // [ceil(D / 16), Q, 16]: the channels' map to the first layer, packed
  float* hist_next;  // [B, F, Q]: the next frame's sums over its older values
  const float* first_cond = nullptr;  // [B, F, D]: the first layer's conditioning with the history's, or null
  int64_t cond_rows = 0;  // G: cond's rows per stream, F (one per position) or 1 (one for the frame)
  const float* cond_bias = nullptr;  // [F, C * D]: each position's bias added to cond's row, or null

  // Stream b's conditioning at position t, its values [k0, k0 + n), into `out`: cond's row plus the
  // position's bias where given, as XLA adds them (`tiered_maps.upsample`).
  JV_TARGET void conditioning(int64_t b, int64_t t, int64_t k0, int64_t n, float* out) const {
    const int64_t CD = s.C * s.D;
    const float* row = cond + (b * cond_rows + (cond_rows == 1 ? 0 : t)) * CD + k0;
    if (cond_bias == nullptr) {
      std::copy(row, row + n, out);
      return;
    }
    const float* bias = cond_bias + t * CD + k0;
    for (int64_t i = 0; i < n; ++i) out[i] = row[i] + bias[i];
  }

  // The next frame's "old" sums: its F positions' rows of W values with the newest F - 1 (not drawn yet) as
  // 0, times the filters, as `packed_matmul` multiplies them.
  JV_TARGET void history_ahead() const {
    const int64_t F = s.F, Wn = hist_W, Q = hist_Q, PQ = (Q + kPanel - 1) / kPanel;
    if (Q == 0) return;
    std::vector<float> rows_FxW(F * Wn, 0.0f);
    for (int64_t b = 0; b < s.B; ++b) {
      const float* values = hist_values + b * Wn;
      for (int64_t t = 0; t < F; ++t) std::copy(values + t, values + Wn, rows_FxW.begin() + t * Wn);
      packed_product<W>(rows_FxW.data(), F, Wn, hist_w, hist_next + b * F * Q, Q, 0, PQ);
    }
  }

  // Position t's row of `first` [B, F, D] for every stream: the first layer's conditioning plus the history's,
  // as the XLA frame step adds them (`sample_history.conditioning`): the position's old sums continued over
  // its newest values (the last frame's samples, values[W - F ..]), times the gains, then through the map to
  // D (one row of the product: the same floats as all F rows at once). `channels` [Q] and `y` [D] are scratch.
  JV_TARGET void history_position(float* first, int64_t t, float* channels, float* y) const {
    const int64_t F = s.F, D = s.D, Wn = hist_W, Q = hist_Q, PD = (D + kPanel - 1) / kPanel;
    const int64_t PQ = (Q + kPanel - 1) / kPanel;
    for (int64_t b = 0; b < s.B; ++b) {
      const float* values = hist_values + b * Wn;
      for (int64_t p = 0; p < PQ; ++p) {  // a panel's 16 channels at a time, each sum in order of w
        alignas(32) float sum[kPanel] = {};
        const int64_t q0 = p * kPanel, n = std::min<int64_t>(kPanel, Q - q0);
        std::copy(hist_old + (b * F + t) * Q + q0, hist_old + (b * F + t) * Q + q0 + n, sum);
        __m256 lo = _mm256_load_ps(sum), hi = _mm256_load_ps(sum + 8);
        for (int64_t w = Wn - t; w < Wn; ++w) {
          const __m256 v = _mm256_set1_ps(values[t + w - F]);
          const W* row = hist_w + (p * Wn + w) * kPanel;
          lo = _mm256_fmadd_ps(v, load8(row), lo);
          hi = _mm256_fmadd_ps(v, load8(row + 8), hi);
        }
        _mm256_store_ps(sum, lo);
        _mm256_store_ps(sum + 8, hi);
        for (int64_t k = 0; k < n; ++k) channels[q0 + k] = sum[k] * hist_gain[b * Q + q0 + k];
      }
      packed_product<W>(channels, 1, Q, hist_out, y, D, 0, PD);
      float* row = first + (b * F + t) * D;
      conditioning(b, t, 0, D, row);
      for (int64_t d = 0; d < D; ++d) row[d] += y[d];
    }
  }

  // Until position t's history conditioning is written: the positions no thread has claimed yet, in order,
  // computed by whichever thread comes (the pool thread claims them all as soon as it starts, so the caller
  // computes the first and then finds the others done, rather than computing all F before its first sample).
  JV_TARGET void await_position(Shared& shared, int64_t t, std::vector<float>& scratch) const {
    if (hist_Q == 0) return;
    scratch.resize(hist_Q + s.D);
    for (int turns = 0; !shared.position_done[t].load(std::memory_order_acquire);) {
      const int k = shared.position_next.load(std::memory_order_relaxed) < s.F
                        ? shared.position_next.fetch_add(1, std::memory_order_relaxed)
                        : static_cast<int>(s.F);
      if (k < s.F) {
        history_position(shared.first_cond.data(), k, scratch.data(), scratch.data() + hist_Q);
        shared.position_done[k].store(1, std::memory_order_release);
      } else {
        idle(turns);  // t is being written by the other thread
      }
    }
  }

  JV_TARGET void ahead() const {
    const int64_t B = s.B, H = ahead_in, G = ahead_out, P = (G + kPanel - 1) / kPanel;
    for (size_t a = 0; a < ahead_w.size(); ++a)
      packed_product<W>(ahead_x + a * B * H, B, H, ahead_w[a], ahead_y + a * B * G, G, 0, P);
  }

  // y[:, panels of this thread] = x @ W for the thread `part` of `parts`, then + (each row b's `given` + b *
  // `given_stride`, where not null) + bias (and ReLU); W packed, and at one stream with AVX-512 read as kept
  // row by row where given (`w_rows`, [D, ceil(O / 16) * 16]; the same floats either way)
  JV_TARGET void product(const float* x, const W* w, const W* w_rows, const float* bias, float* y, int64_t O,
                         bool relu, int part, int parts, int32_t* rows, const float* given = nullptr,
                         int64_t given_stride = 0) const {
    static const bool avx512 = has_avx512();
    const int64_t P = (O + kPanel - 1) / kPanel, begin = P * part / parts, end = P * (part + 1) / parts;
    if (s.B == 1) {  // one stream: only the weight rows of the inputs the ReLU left (x is >= 0 here)
      const int64_t n = avx512 ? list_nonzero512(x, s.D, rows) : list_nonzero(x, 0, s.D, rows, 0);
      if (avx512 && w_rows != nullptr) {
        listed_rows512<W>(x, w_rows, P * kPanel, begin, end, y, O, rows, n);
      } else {  // AVX2: the packed panels, four at a time
        int64_t p = begin;
        for (; p + 4 <= end; p += 4) tile<1, 4, W, true>(x, s.D, w, p, y, O, 0, rows, n);
        for (; p < end; ++p) tile<1, 1, W, true>(x, s.D, w, p, y, O, 0, rows, n);
      }
    } else if (s.B > 2 && avx512)
      panels512<W>(x, s.B, s.D, w, y, O, begin, end);
    else
      panels<W>(x, s.B, s.D, w, y, O, begin, end);
    const int64_t c0 = begin * kPanel, c1 = std::min(O, end * kPanel);
    for (int64_t b = 0; b < s.B; ++b)
      for (int64_t c = c0; c < c1; ++c) {
        const float z = given == nullptr ? y[b * O + c] : y[b * O + c] + given[b * given_stride + c];
        const float v = z + bias[c];
        y[b * O + c] = relu ? std::max(v, 0.0f) : v;
      }
  }

  // Samples first .. F - 1 as thread `part` (0 the caller, 1 the pool thread); the caller runs alone
  // until the pool thread is ready to join (`shared.joinable`), then gives it the next sample to start at.
  JV_TARGET void run(Shared& shared, int part, int first) const {
    const int64_t B = s.B, F = s.F, D = s.D;
    std::vector<int32_t> win(window, window + B * F);  // this thread's copy of each stream's window
    for (int64_t b = 0; b < B; ++b)  // the pool thread joining late: the samples already drawn
      for (int j = 0; j < first; ++j) {
        std::copy(win.begin() + b * F + 1, win.begin() + (b + 1) * F, win.begin() + b * F);
        win[b * F + F - 1] = tokens[b * F + j];
      }
    std::vector<float> x0(B * D);
    std::vector<int32_t> rows(D);  // scratch of `product` at one stream
    std::vector<const float*> table_rows(F);  // scratch of `first_layer512`
    static const bool avx512 = has_avx512();
    alignas(32) float scratch[kSymbols];
    std::vector<float> history_scratch;  // `await_position`'s
    std::vector<float> cond_now(B * s.C * D);  // [B, C * D]: this sample's conditioning, each stream's
    int parts = part == 0 ? 1 : 2, passed = 0;
    for (int64_t pos = first; pos < F; ++pos) {
      await_position(shared, pos, history_scratch);
      if (parts == 1 && shared.joinable.load(std::memory_order_acquire)) {
        shared.start.store(static_cast<int>(pos), std::memory_order_release);
        parts = 2;
      }
      // this sample's conditioning of each layer, but the first's where first_cond has it (with the history)
      const int64_t own = first_cond == nullptr ? 0 : D, CD = s.C * D;
      for (int64_t b = 0; b < B; ++b) conditioning(b, pos, own, CD - own, cond_now.data() + b * CD + own);
      // the first layer: bias + conditioning + the table row of each window position's symbol, ReLU
      for (int64_t b = 0; b < B; ++b) {
        float* x = x0.data() + b * D;
        const float* c = first_cond == nullptr ? cond_now.data() + b * CD : first_cond + (b * F + pos) * D;
        if (avx512) {
          first_layer512(x, in_b, c, tables, win.data() + b * F, F, D, table_rows.data());
          continue;
        }
        for (int64_t d = 0; d < D; ++d) x[d] = in_b[d] + c[d];
        for (int64_t j = 0; j < F; ++j) {
          // a symbol outside 0..255 is clamped to it, as XLA's gather does (a guard: symbols are bytes)
          const int32_t symbol = std::min<int32_t>(std::max<int32_t>(win[b * F + j], 0), kSymbols - 1);
          const float* row = tables + (j * kSymbols + symbol) * D;
          int64_t d = 0;
          for (; d + 8 <= D; d += 8)
            _mm256_storeu_ps(x + d, _mm256_add_ps(_mm256_loadu_ps(x + d), _mm256_loadu_ps(row + d)));
          for (; d < D; ++d) x[d] += row[d];
        }
        for (int64_t d = 0; d < D; ++d) x[d] = std::max(x[d], 0.0f);
      }
      const float* x = x0.data();
      const int64_t panel_rows = (D + kPanel - 1) / kPanel * D * kPanel;
      for (int64_t l = 0; l < s.L; ++l) {
        float* y = shared.hidden.data() + l * B * D;
        const W* layer_rows = hidden_rows == nullptr ? nullptr : hidden_rows + l * panel_rows;
        // layer l + 1's own conditioning, where every layer has one
        const float* given = l + 1 < s.C ? cond_now.data() + (l + 1) * D : nullptr;
        product(x, hidden_w[l], layer_rows, hidden_b + l * D, y, D, true, part, parts, rows.data(), given,
                s.C * D);
        if (parts == 2) shared.barrier.wait(passed);
        x = y;
      }
      float* logits_BxV = shared.logits.data() + (pos % 2) * B * kSymbols;
      product(x, out_w, out_rows, out_b, logits_BxV, kSymbols, false, part, parts, rows.data());
      if (parts == 2) shared.barrier.wait(passed);
      for (int64_t b = 0; b < B; ++b) {
        const float* row = logits_BxV + b * kSymbols;
        const int32_t token = draw(row, u[pos * B + b], temperature, scratch);
        std::copy(win.begin() + b * F + 1, win.begin() + (b + 1) * F, win.begin() + b * F);
        win[b * F + F - 1] = token;
        if (part == 0) {
          tokens[b * F + pos] = token;
          std::copy(row, row + kSymbols, logits + (b * F + pos) * kSymbols);
        }
      }
    }
  }
};

#endif

template <typename Buffer>
int64_t count(const Buffer& buffer) {
  return static_cast<int64_t>(buffer.element_count());
}

template <typename W>
ffi::Error SampleFrame(ffi::ThreadPool pool, ffi::Buffer<ffi::S32> window, ffi::Buffer<ffi::F32> cond,
                       ffi::Buffer<ffi::F32> cond_bias,
                       ffi::Buffer<ffi::F32> u, ffi::Buffer<ffi::F32> temperature, ffi::Buffer<ffi::F32> tables,
                       ffi::Buffer<ffi::F32> in_b, ffi::AnyBuffer hidden_rows, ffi::Buffer<ffi::F32> hidden_b,
                       ffi::AnyBuffer out_w, ffi::AnyBuffer out_rows, ffi::Buffer<ffi::F32> out_b,
                       ffi::Buffer<ffi::F32> ahead_x, ffi::Buffer<ffi::F32> hist_old,
                       ffi::Buffer<ffi::F32> hist_values, ffi::Buffer<ffi::F32> hist_gain, ffi::AnyBuffer hist_w,
                       ffi::AnyBuffer hist_out, ffi::RemainingArgs packed, ffi::ResultBuffer<ffi::S32> tokens,
                       ffi::ResultBuffer<ffi::F32> logits, ffi::ResultBuffer<ffi::F32> ahead_y,
                       ffi::ResultBuffer<ffi::F32> hist_next) {
#if JV_X86
  auto wd = window.dimensions(), cd = cond.dimensions(), td = tables.dimensions(), hbd = hidden_b.dimensions();
  if (wd.size() != 2 || cd.size() != 3 || td.size() != 3 || hbd.size() != 2)
    return ffi::Error::InvalidArgument(
        "sample_frame: expected window[B, F], cond[B, F or 1, C * D], tables[F, 256, D], hidden_b[L, D]");
  const int64_t D = td[2], C = D > 0 ? cd[2] / D : 1;
  const Sizes s{wd[0], wd[1], D, hbd[0], C};
  const int64_t PD = (s.D + kPanel - 1) / kPanel;
  auto od = out_w.dimensions(), hrd = hidden_rows.dimensions(), ord = out_rows.dimensions();
  auto bd = cond_bias.dimensions();
  const bool biased = count(cond_bias) != 0;
  if (cd[0] != s.B || (cd[1] != s.F && cd[1] != 1) || cd[2] != s.C * s.D || s.C < 1 || s.C > s.L + 1 ||
      (biased && (bd.size() != 2 || bd[0] != s.F || bd[1] != s.C * s.D)) || td[0] != s.F ||
      td[1] != kSymbols ||
      count(u) != s.F * s.B || count(temperature) != 1 || count(in_b) != s.D ||
      hbd[1] != s.D ||
      od.size() != 3 || od[0] != kSymbols / kPanel || od[1] != s.D || od[2] != kPanel ||
      count(out_b) != kSymbols)
    return ffi::Error::InvalidArgument("sample_frame: the operands' shapes do not agree");
  // the row-kept copies: both given (only AVX-512 reads them) or both empty
  const bool with_rows = count(out_rows) != 0;
  if (with_rows ? hrd.size() != 3 || hrd[0] != s.L || (s.L && (hrd[1] != s.D || hrd[2] != PD * kPanel)) ||
                      ord.size() != 2 || ord[0] != s.D || ord[1] != kSymbols
                : count(hidden_rows) != 0)
    return ffi::Error::InvalidArgument("sample_frame: the row-kept weights' shapes do not agree");
  constexpr ffi::DataType kWeights = sizeof(W) == 4 ? ffi::DataType::F32 : ffi::DataType::BF16;
  auto axd = ahead_x.dimensions(), ayd = ahead_y->dimensions();
  if (axd.size() != 3 || ayd.size() != 3 || ayd[0] != axd[0] || axd[1] != s.B || ayd[1] != s.B ||
      static_cast<int64_t>(packed.size()) != s.L + axd[0])
    return ffi::Error::InvalidArgument(
        "sample_frame: expected the L hidden layers' packed weights [ceil(D/16), D, 16], then the product "
        "ahead's A [ceil(G/16), H, 16] for x[A, B, H] and y[A, B, G]");
  // packed weights [P, I, 16] as each layer keeps them, the hidden layers' first
  std::vector<const W*> hidden_weights, ahead_weights;
  for (int64_t k = 0; k < s.L + axd[0]; ++k) {
    const bool hidden = k < s.L;
    const auto w = packed.get<ffi::AnyBuffer>(k);
    if (!w.has_value()) return w.error();
    const auto pd = w->dimensions();
    const int64_t P = hidden ? PD : (ayd[2] + kPanel - 1) / kPanel, I = hidden ? s.D : axd[2];
    if (pd.size() != 3 || pd[0] != P || pd[1] != I || pd[2] != kPanel || w->element_type() != kWeights)
      return ffi::Error::InvalidArgument(
          "sample_frame: packed weights must be [ceil(O/16), I, 16] in the target's dtype");
    (hidden ? hidden_weights : ahead_weights).push_back(reinterpret_cast<const W*>(w->untyped_data()));
  }
  // the history: hist_old [B, F, Q], hist_values [B, W], hist_gain [B, Q], hist_w [ceil(Q/16), W, 16],
  // hist_out [ceil(D/16), Q, 16] (Q = 0: none)
  auto hod = hist_old.dimensions(), hvd = hist_values.dimensions(), hgd = hist_gain.dimensions(),
       hwd = hist_w.dimensions(), hmd = hist_out.dimensions(), hnd = hist_next->dimensions();
  if (hod.size() != 3 || hvd.size() != 2 || hgd.size() != 2 || hnd.size() != 3)
    return ffi::Error::InvalidArgument(
        "sample_frame: expected hist_old[B, F, Q], hist_values[B, W], hist_gain[B, Q], hist_next[B, F, Q]");
  const int64_t HQ = hod[2], HW = hvd[1];
  if (HQ > 0 && (hod[0] != s.B || hod[1] != s.F || hvd[0] != s.B || HW < s.F || hgd[0] != s.B ||
                 hgd[1] != HQ || hnd[0] != s.B || hnd[1] != s.F || hnd[2] != HQ || hwd.size() != 3 ||
                 hwd[0] != (HQ + kPanel - 1) / kPanel || hwd[1] != HW || hwd[2] != kPanel || hmd.size() != 3 ||
                 hmd[0] != PD || hmd[1] != HQ || hmd[2] != kPanel || hist_w.element_type() != kWeights ||
                 hist_out.element_type() != kWeights))
    return ffi::Error::InvalidArgument("sample_frame: the history's operands' shapes do not agree");
  if (out_w.element_type() != kWeights ||
      hidden_rows.element_type() != kWeights || out_rows.element_type() != kWeights)
    return ffi::Error::InvalidArgument("sample_frame: the weights' dtype does not match the target");
  if (s.B == 0) return ffi::Error::Success();

  Frame<W> frame{s,
                       window.typed_data(),
                       cond.typed_data(),
                       u.typed_data(),
                       tables.typed_data(),
                       in_b.typed_data(),
                       temperature.typed_data()[0],
                       std::move(hidden_weights),
                       with_rows ? reinterpret_cast<const W*>(hidden_rows.untyped_data()) : nullptr,
                       hidden_b.typed_data(),
                       reinterpret_cast<const W*>(out_w.untyped_data()),
                       with_rows ? reinterpret_cast<const W*>(out_rows.untyped_data()) : nullptr,
                       out_b.typed_data(),
                       tokens->typed_data(),
                       logits->typed_data(),
                       axd[2],
                       ayd[2],
                       ahead_x.typed_data(),
                       std::move(ahead_weights),
                       ahead_y->typed_data(),
                       HW,
                       HQ,
                       hist_old.typed_data(),
                       hist_values.typed_data(),
                       hist_gain.typed_data(),
                       reinterpret_cast<const W*>(hist_w.untyped_data()),
                       reinterpret_cast<const W*>(hist_out.untyped_data()),
                       hist_next->typed_data()};
  auto shared = std::make_shared<Shared>(s);
  frame.cond_rows = cd[1];
  frame.cond_bias = biased ? cond_bias.typed_data() : nullptr;
  if (frame.hist_Q > 0) {  // written a position at a time by either thread (`await_position`)
    shared->first_cond.resize(s.B * s.F * s.D);
    frame.first_cond = shared->first_cond.data();
  }
  const int64_t sizes = (static_cast<int64_t>(sizeof(W)) << 56) | (s.C << 48) | (s.D << 24) | (s.F << 8) | s.L;
  const bool timed = s.B == 1 && pool.num_threads() >= 2;
  const bool helped = pool.num_threads() >= 2 && (!timed || one_stream_threads.helper(sizes));
  const bool ahead = !frame.ahead_w.empty() || frame.hist_Q > 0;
  const auto began = std::chrono::steady_clock::now();
  if (helped || (ahead && pool.num_threads() >= 2)) {
    pool.Schedule([shared, frame, helped] {
      int open = 0;
      if (!shared->state.compare_exchange_strong(open, 1, std::memory_order_acq_rel)) return;  // too late
      std::vector<float> history_scratch;
      frame.await_position(*shared, frame.s.F - 1, history_scratch);  // the positions the caller has not taken
      frame.ahead();
      frame.history_ahead();
      if (helped) {
        shared->joinable.store(true, std::memory_order_release);
        int first;
        for (int turns = 0; (first = shared->start.load(std::memory_order_acquire)) < 0;) idle(turns);
        if (first < frame.s.F) frame.run(*shared, 1, first);
      }
      shared->helper_done.store(1, std::memory_order_release);
      for (int turns = 0; !shared->over.load(std::memory_order_acquire);) idle(turns);
    });
  }
  frame.run(*shared, 0, 0);
  int open = 0;
  if (shared->state.compare_exchange_strong(open, 2, std::memory_order_acq_rel)) {  // no pool thread came
    frame.ahead();
    frame.history_ahead();
  } else {
    if (shared->start.load(std::memory_order_acquire) < 0)  // after the last sample: nothing for it to do
      shared->start.store(static_cast<int>(s.F), std::memory_order_release);
    for (int turns = 0; !shared->helper_done.load(std::memory_order_acquire);) idle(turns);
    shared->over.store(true, std::memory_order_release);
  }
  if (timed) {
    const std::chrono::duration<double, std::nano> took = std::chrono::steady_clock::now() - began;
    one_stream_threads.record(helped, took.count() / static_cast<double>(s.F));
  }
  return ffi::Error::Success();
#else
  return ffi::Error::Unimplemented("sample_frame needs an x86-64 CPU with AVX2 and FMA");
#endif
}

}  // namespace

static auto Binding() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::ThreadPool>()
      .Arg<ffi::Buffer<ffi::S32>>()   // window [B, F]
      .Arg<ffi::Buffer<ffi::F32>>()   // cond [B, F or 1, C * D]: the first layer's, then each hidden layer's (C - 1)
      .Arg<ffi::Buffer<ffi::F32>>()   // cond_bias [F, C * D] added to cond's row at each position, or empty
      .Arg<ffi::Buffer<ffi::F32>>()   // u [F, B]
      .Arg<ffi::Buffer<ffi::F32>>()   // temperature [] (0: the most probable symbol)
      .Arg<ffi::Buffer<ffi::F32>>()   // tables [F, 256, D]
      .Arg<ffi::Buffer<ffi::F32>>()   // in_b [D]
      .Arg<ffi::AnyBuffer>()          // hidden_rows [L, D, ceil(D / 16) * 16], or empty
      .Arg<ffi::Buffer<ffi::F32>>()   // hidden_b [L, D]
      .Arg<ffi::AnyBuffer>()          // out_w [16, D, 16]
      .Arg<ffi::AnyBuffer>()          // out_rows [D, 256], or empty
      .Arg<ffi::Buffer<ffi::F32>>()   // out_b [256]
      .Arg<ffi::Buffer<ffi::F32>>()   // ahead_x [A, B, H] (A = 0: no product ahead)
      .Arg<ffi::Buffer<ffi::F32>>()   // hist_old [B, F, Q] (Q = 0: no history here)
      .Arg<ffi::Buffer<ffi::F32>>()   // hist_values [B, W]
      .Arg<ffi::Buffer<ffi::F32>>()   // hist_gain [B, Q]
      .Arg<ffi::AnyBuffer>()          // hist_w [ceil(Q / 16), W, 16]
      .Arg<ffi::AnyBuffer>()          // hist_out [ceil(D / 16), Q, 16]
      .RemainingArgs()                // packed: L x [ceil(D / 16), D, 16] (hidden), A x [ceil(G / 16), H, 16] (ahead)
      .Ret<ffi::Buffer<ffi::S32>>()   // tokens [B, F]
      .Ret<ffi::Buffer<ffi::F32>>()   // logits [B, F, 256]
      .Ret<ffi::Buffer<ffi::F32>>()   // ahead_y [A, B, G]
      .Ret<ffi::Buffer<ffi::F32>>();  // hist_next [B, F, Q]
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxvoiceSampleFrameF32, SampleFrame<float>, Binding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxvoiceSampleFrameBF16, SampleFrame<uint16_t>, Binding());

// 1 where this CPU runs the kernel (AVX2 + FMA), 0 where Python must use the XLA step.
extern "C" int jaxvoice_sample_frame_isa() { return has_avx2_fma() ? 1 : 0; }

// 1 where one stream reads the row-kept weight copies (AVX-512), so that Python builds them only there.
extern "C" int jaxvoice_sample_frame_reads_rows() { return has_avx2_fma() && has_avx512() ? 1 : 0; }
