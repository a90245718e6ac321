// The LSTM and GRU recurrences on x86-64 CPUs with AVX-512, float32, as XLA FFI calls.
//
// What XLA's CPU runtime runs as a dozen small ops per time step (the
// recurrent matmul, slices, gate fusions, in-place writes) runs here as one
// call per sequence: each step's matmul with the gate math fused into its
// epilogue, as oneDNN's RNN primitive does. The forward multiplies each step's
// [x_t | h_{t-1}] by [W_ih; W_hh] in one register tile, so the input
// projection of all steps is never written out; the backward computes x's
// gradient dz_t W_ih^T beside dh := dz_t W_hh^T. The weight gradients stay
// matmuls over all steps, by mmzoo_weight_grads below, a blocked GEMM that XLA's
// own dot trails on these shapes (mmzoo/nn/cpu_kernels.py).
//
// Gate math is PyTorch's. LSTM: [i, f, g, o] = x W_ih + b + h W_hh (b the sum
// of both biases), c' = sigmoid(f) c + sigmoid(i) tanh(g), h' = sigmoid(o) tanh(c').
// GRU: r = sigmoid(x W_ir + h W_hr + b_r), z = sigmoid(x W_iz + h W_hz + b_z),
// n = tanh(x W_in + b_in + r (h W_hn + b_hn)), h' = (1 - z) n + z h.
//
// mmzoo_lstm_forward(x [.., I], w_ih [I, 4H], b [4H], w_hh [H, 4H], h0 [B, H], c0 [B, H])
//     -> hs [.., H], cs [.., H], act [.., 4H or 0]
//   hs, cs: h_t and c_t of every step; act: the activations [i, f, g, o] of
//   every step, for the backward pass (a zero-width act skips them). With an
//   empty w_ih ([0, 4H]), x is the input projection x W_ih [.., 4H] itself.
// mmzoo_lstm_backward(act, cs, c0, w_ih, w_hh, d_hs [.., H], d_hT [B, H], d_cT [B, H])
//     -> dz [.., 4H], d_h0 [B, H], d_c0 [B, H], d_b_rows [B, 4H], dx [.., I]
//   dz: the gradient of every step's gate pre-activations, from which the
//   caller gets dW_ih and dW_hh as matmuls; d_b_rows: dz summed over time,
//   per row (the bias gradient is its sum over rows); dx: x's gradient, or
//   nothing with an empty w_ih ([0, 4H]; then dx is [.., 0]). I % 64 == 0.
// mmzoo_gru_forward(x [.., I], w_ih [I, 3H], b [4H], w_hh [H, 3H], h0 [B, H])
//     -> hs [.., H], act [.., 4H or 0]
//   b: [b_ir + b_hr, b_iz + b_hz, b_in, b_hn]; act: [r, z, n, h W_hn + b_hn]
//   of every step; an empty w_ih as for the LSTM.
// mmzoo_gru_backward(act, hs, h0, w_ih, w_hh, d_hs [.., H], d_hT [B, H])
//     -> dxw [.., 3H], dhw [.., 3H], d_h0 [B, H], d_b_rows [B, 4H], dx [.., I]
//   dxw, dhw: the gradients of every step's x W_ih and h W_hh (with their
//   biases), [dr, dz, dn] and [dr, dz, dn r] at the pre-activations; d_b_rows:
//   [dr, dz, dn, dn r] summed over time, per row; dx as the LSTM's.
// mmzoo_weight_grads(x [.., I], hs [.., H], h0 [B, H], d [.., N])
//     -> dw_x [I, N], dw_h [H, N]
//   x^T d and h_prev^T d summed over all steps and rows, h_prev the state
//   before each step (h0, then hs of the step before): the weight gradients
//   of W_ih and W_hh from dz. I or H may be 0; N % 64 == 0.
// "..": [T, B] with batch_major = 0, [B, T] with batch_major = 1.
// Requires H % 64 == 0 (checked by the caller and here).
//
// Threads: each step splits into units of work (over hidden units; over rows
// in the backward's elementwise phase) that the calling thread and up to
// max_threads - 1 tasks on XLA's intra-op pool share; a step's units start
// once the previous step's are all done. Worker w takes units w, w + workers,
// ... of every step first, so that each core's share of the weights stays in
// its L2 from step to step, then claims any left over: a task that starts
// late, or never, holds nobody up. The caller sets
// max_threads to the cores per CPU device, so that devices running side by
// side (one per core) do not crowd each other out; with one thread, the work
// goes to one pool task while the calling thread sleeps (see RunPhases).

#include <immintrin.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// exp(x), Cephes' single-precision polynomial after range reduction; NaN
// passes through (the clamps keep their NaN operand second).
inline __m512 Exp(__m512 x) {
  x = _mm512_max_ps(_mm512_set1_ps(-87.0f), x);
  x = _mm512_min_ps(_mm512_set1_ps(88.0f), x);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);  // ln 2, split in two
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  const __m512 y = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(y, n);
}

inline __m512 Sigmoid(__m512 x) {
  const __m512 one = _mm512_set1_ps(1.0f);
  return _mm512_div_ps(one, _mm512_add_ps(one, Exp(_mm512_sub_ps(_mm512_setzero_ps(), x))));
}

inline __m512 Tanh(__m512 x) {  // 2 sigmoid(2x) - 1
  return _mm512_fmsub_ps(_mm512_set1_ps(2.0f), Sigmoid(_mm512_add_ps(x, x)), _mm512_set1_ps(1.0f));
}

// The accumulators that a panel's 16-column groups feed, in order: Cols<0, 1,
// 3> adds a panel's three groups into acc[r][0], acc[r][1] and acc[r][3].
template <int... Q>
struct Cols {
  static constexpr int kWidth = sizeof...(Q);  // 16-column groups per panel row
  static constexpr int kAcc[] = {Q...};
};
using AllFour = Cols<0, 1, 2, 3>;

// Lines of a panel to prefetch into L2 while a tile computes: see PrefetchSlice.
struct Prefetch {
  const char* lines = nullptr;
  int64_t count = 0;
};

// acc[r][C::kAcc[q]] += sum_k a[r * lda + k] * panel[k * 16 W + 16 q ..], for
// MR rows and the W = C::kWidth column groups of a panel packed contiguously per k;
// every other k also prefetches one line of `next` (up to next.count).
template <int MR, class C>
__attribute__((always_inline)) inline void Accumulate(__m512 (&acc)[MR][4],
                                                      const float* __restrict a, int64_t lda,
                                                      const float* __restrict panel,
                                                      int64_t depth, Prefetch next) {
  constexpr int W = C::kWidth;
  for (int64_t k = 0; k < depth; ++k) {
    if ((k & 1) == 0 && (k >> 1) < next.count) _mm_prefetch(next.lines + (k >> 1) * 64, _MM_HINT_T1);
    const float* p = panel + k * 16 * W;
    __m512 b[W];
    for (int q = 0; q < W; ++q) b[q] = _mm512_loadu_ps(p + 16 * q);
    for (int r = 0; r < MR; ++r) {
      const __m512 av = _mm512_set1_ps(a[r * lda + k]);
      for (int q = 0; q < W; ++q)
        acc[r][C::kAcc[q]] = _mm512_fmadd_ps(av, b[q], acc[r][C::kAcc[q]]);
    }
  }
}

// One register tile: MR rows of [a1 | a2] (widths depth1 and depth2) times a
// panel of depth1 rows of C1's column groups, then depth2 rows of C2's, into
// four 16-column accumulators per row, prefetching `next` meanwhile. A function
// of its own with local accumulators: inlined into the gate math, whose
// constants then hold registers, its accumulators can spill to the stack inside
// the loop, as small edits around it made them do (the forward 1.2-2x slower).
template <int MR, class C1 = AllFour, class C2 = AllFour>
__attribute__((noinline)) void Tile(const float* __restrict a1, int64_t lda1, int64_t depth1,
                                    const float* __restrict a2, int64_t lda2, int64_t depth2,
                                    const float* __restrict panel, Prefetch next,
                                    __m512 (&out)[MR][4]) {
  __m512 acc[MR][4];
  for (int r = 0; r < MR; ++r)
    for (int q = 0; q < 4; ++q) acc[r][q] = _mm512_setzero_ps();
  Accumulate<MR, C1>(acc, a1, lda1, panel, depth1, next);
  const int64_t first = (depth1 + 1) / 2;  // lines the first segment prefetched
  Accumulate<MR, C2>(acc, a2, lda2, panel + depth1 * 16 * C1::kWidth, depth2,
                     {next.lines + first * 64, next.count - first});
  for (int r = 0; r < MR; ++r)
    for (int q = 0; q < 4; ++q) out[r][q] = acc[r][q];
}

// The number of row tiles ForRowTiles splits `rows` into.
inline int64_t RowTiles(int64_t rows) { return (rows + 5) / 6; }

// The share of a panel of `floats` floats that row tile `tile` (of `tiles`)
// prefetches: the panel's cache lines split evenly over the tiles. Each tile
// prefetches the panel of the unit its thread takes next, so that the panel,
// which each step streams from L3 (the weights outgrow L2), is in L2 when that
// unit starts (standalone, the tile ran 4-8% faster so).
Prefetch PrefetchSlice(const float* panel, int64_t floats, int64_t tiles, int64_t tile) {
  const int64_t lines = floats * static_cast<int64_t>(sizeof(float)) / 64;
  const int64_t per = (lines + tiles - 1) / tiles;
  const int64_t first = std::min(lines, tile * per);
  return {reinterpret_cast<const char*>(panel) + first * 64, std::min(per, lines - first)};
}

// With no W_ih, a forward's epilogue adds the given projection's rows: their
// `gates` 16-float pieces at x_t + row * x_row + j + gate * hidden, for rows r0 ..
// r0 + MR - 1. Prefetched before the tile, they are in L1 when it ends (the
// char model's first layer, whose projections a gather has just written: that
// gather and the layer's forward 1.07-1.16x faster).
template <int MR>
inline void PrefetchProjection(const float* x_t, int64_t x_row, int64_t r0, int64_t j,
                               int64_t hidden, int gates) {
  for (int r = 0; r < MR; ++r)
    for (int gate = 0; gate < gates; ++gate)
      _mm_prefetch(reinterpret_cast<const char*>(x_t + (r0 + r) * x_row + j + gate * hidden),
                   _MM_HINT_T0);
}

// Calls body.template operator()<MR>(row, tile) over `rows` rows in
// RowTiles(rows) tiles of at most 6 rows, as even as can be (32 rows: 6, 6,
// 5, 5, 5, 5, not 6, 6, 6, 6, 6, 2, whose last tile would run at half speed:
// with few rows a tile waits on its panel's loads, which all rows share).
template <class Body>
inline void ForRowTiles(int64_t rows, const Body& body) {
  const int64_t tiles = RowTiles(rows);
  if (tiles == 0) return;
  const int64_t base = rows / tiles, extra = rows % tiles;
  for (int64_t tile = 0, r = 0; tile < tiles; ++tile) {
    const int64_t mr = base + (tile < extra);
    switch (mr) {
      case 6: body.template operator()<6>(r, tile); break;
      case 5: body.template operator()<5>(r, tile); break;
      case 4: body.template operator()<4>(r, tile); break;
      case 3: body.template operator()<3>(r, tile); break;
      case 2: body.template operator()<2>(r, tile); break;
      case 1: body.template operator()<1>(r, tile); break;
      default: break;
    }
    r += mr;
  }
}

// Strides, in floats, of a [.., width] array: step t at t * step, row b at b * row.
struct Strides {
  int64_t step, row;
};
Strides StridesOf(bool batch_major, int64_t steps, int64_t batch, int64_t width) {
  return batch_major ? Strides{width, steps * width} : Strides{batch * width, width};
}

// Waits until `counter` reaches `target`: spins, then yields the core (when
// there are more runnable threads than cores, as with many fake devices).
inline void WaitFor(const std::atomic<int64_t>& counter, int64_t target) {
  for (int spin = 0; counter.load(std::memory_order_acquire) < target; ++spin) {
    if (spin < 4096) {
      _mm_pause();
    } else {
      sched_yield();
    }
  }
}

struct Progress {
  explicit Progress(int64_t total) : claimed(new std::atomic<uint8_t>[total]) {
    for (int64_t i = 0; i < total; ++i) claimed[i].store(0, std::memory_order_relaxed);
  }
  std::unique_ptr<std::atomic<uint8_t>[]> claimed;  // per phase and unit: taken yet
  std::atomic<int64_t> done{0};     // units finished
  std::atomic<int64_t> workers{0};  // workers started
  std::atomic<int> owner{0};        // one thread only: 0 not yet taken, 1 a pool task, 2 the caller
};

// The threads that RunPhases shares `units` between at the most: the caller and its helpers.
int64_t Workers(ffi::ThreadPool& pool, int64_t max_threads, int64_t units) {
  return std::max<int64_t>(1, std::min({pool.num_threads(), max_threads, units}));
}

// Runs fn(phase, unit) for every phase < phases and unit < units; phase p's
// units wait for all of phase p-1's. Returns when all are done.
template <class Fn>
void RunPhases(ffi::ThreadPool& pool, int64_t max_threads, int64_t phases, int64_t units,
               const Fn& fn) {
  const int64_t total = phases * units, workers = Workers(pool, max_threads, units);
  auto progress = std::make_shared<Progress>(total);
  auto work = [progress, phases, units, workers, fn]() {
    const int64_t w = progress->workers.fetch_add(1, std::memory_order_relaxed) % workers;
    // A late helper starts at the phase under way (or finds all done).
    for (int64_t phase = progress->done.load(std::memory_order_acquire) / units; phase < phases;
         ++phase) {
      WaitFor(progress->done, phase * units);
      std::atomic<uint8_t>* claimed = &progress->claimed[phase * units];
      for (const bool own : {true, false})  // this worker's units first, then any left
        for (int64_t u = 0; u < units; ++u) {
          if ((u % workers == w) != own || claimed[u].load(std::memory_order_relaxed) ||
              claimed[u].exchange(1, std::memory_order_relaxed))
            continue;
          fn(phase, u);
          progress->done.fetch_add(1, std::memory_order_release);
        }
    }
  };
  const int64_t helpers = workers - 1;
  if (helpers <= 0 && pool.num_threads() > 0) {
    // One thread does it all: preferably a pool thread, where XLA runs its own
    // loops, while the calling thread sleeps rather than runs beside the pool's
    // threads (with one device per core those are busy with the other devices).
    // If no pool thread takes it up within ~100 us, the caller does it.
    auto solo = [progress, work]() {
      int unclaimed = 0;
      if (progress->owner.compare_exchange_strong(unclaimed, 1)) {
        work();
        progress->done.notify_all();
      }
    };
    pool.Schedule(decltype(solo)(solo));
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::microseconds(100);
    while (progress->owner.load() == 0 && std::chrono::steady_clock::now() < give_up) _mm_pause();
    int unclaimed = 0;
    if (progress->owner.compare_exchange_strong(unclaimed, 2)) {
      work();
      return;
    }
    for (int64_t seen = progress->done.load(); seen < total; seen = progress->done.load())
      progress->done.wait(seen);
    return;
  }
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule(decltype(work)(work));
  work();
  WaitFor(progress->done, total);
}

// W [rows, G H] (G = gates) as panels for the forward tiles, [H/16][depth][16 G]
// from row 0 of each panel on: panel j holds the G gates' columns of hidden
// units 16j .. 16j + 15, so that one tile has all gates of 16 units.
void PackForward(const float* w, int64_t rows, int64_t hidden, int gates, int64_t panel_depth,
                 float* packed) {
  for (int64_t j = 0; j < hidden / 16; ++j)
    for (int64_t k = 0; k < rows; ++k)
      for (int gate = 0; gate < gates; ++gate)
        std::memcpy(packed + (j * panel_depth + k) * 16 * gates + gate * 16,
                    w + k * gates * hidden + gate * hidden + j * 16, 16 * sizeof(float));
}

// W^T [width, rows] for W [rows, width] as panels for the backward tiles:
// [rows/64][width][64], panel n holding output units 64n .. 64n + 63.
void PackBackward(const float* w, int64_t rows, int64_t width, float* packed) {
  for (int64_t n = 0; n < rows / 64; ++n)
    for (int64_t k = 0; k < width; ++k)
      for (int c = 0; c < 64; ++c)
        packed[(n * width + k) * 64 + c] = w[(n * 64 + c) * width + k];
}

// Per-thread scratch, reused across calls (the packed weights, the backward
// carries), 64-byte aligned: the tiles' panel loads then never straddle two
// cache lines, which on Intel cores costs them a third of their speed
// (glibc's malloc aligns to 16 bytes). Null if out of memory.
float* Scratch(int which, size_t size) {
  struct Buffer {
    float* data = nullptr;
    size_t size = 0;
    ~Buffer() { std::free(data); }
  };
  thread_local Buffer buffers[3];
  Buffer& buffer = buffers[which];
  if (buffer.size < size) {
    std::free(buffer.data);
    buffer.data = static_cast<float*>(std::aligned_alloc(64, (size * sizeof(float) + 63) / 64 * 64));
    buffer.size = buffer.data ? size : 0;
  }
  return buffer.data;
}

ffi::Error NoScratch() {
  return ffi::Error(ffi::ErrorCode::kResourceExhausted,
                    "mmzoo_rnn: out of memory for the kernel's scratch space");
}

// The backward's matmul phase for one unit, 64 output columns `block` of
// [dh | dx_t]: blocks below H/64 are dh := dzh_t W_hh^T (+ what dh holds with
// `add_to_dh`), the rest dx_t := dzx_t W_ih^T. `packed` holds PackBackward's
// panels of W_hh^T, then W_ih^T, each `width` deep; dzh_t and dzx_t are rows of
// that width (stride dz_row). The next panel this thread will likely take is
// prefetched meanwhile (PrefetchSlice).
inline void BackwardProducts(const float* packed, int64_t width, int64_t block, int64_t units,
                             int64_t workers, int64_t hidden, int64_t batch, const float* dzh_t,
                             const float* dzx_t, int64_t dz_row, float* dh, float* dx_t,
                             int64_t dx_row, bool add_to_dh) {
  const float* panel = packed + block * width * 64;
  const float* next = packed + (block + workers) % units * width * 64;
  const bool is_dx = block >= hidden / 64;
  const float* a = is_dx ? dzx_t : dzh_t;
  float* out = is_dx ? dx_t + (block - hidden / 64) * 64 : dh + block * 64;
  const int64_t out_row = is_dx ? dx_row : hidden;
  const bool add = add_to_dh && !is_dx;
  ForRowTiles(batch, [&]<int MR>(int64_t r0, int64_t tile) {
    __m512 acc[MR][4];
    Tile<MR>(nullptr, 0, 0, a + r0 * dz_row, dz_row, width, panel,
             PrefetchSlice(next, width * 64, RowTiles(batch), tile), acc);
    for (int k = 0; k < MR; ++k)
      for (int q = 0; q < 4; ++q) {
        float* o = out + (r0 + k) * out_row + q * 16;
        _mm512_storeu_ps(o, add ? _mm512_add_ps(acc[k][q], _mm512_loadu_ps(o)) : acc[k][q]);
      }
  });
}

// Checks a sequence's shape `seq` ([T, B, width] or [B, T, width]) and hidden size.
ffi::Error CheckShapes(int64_t batch_major, ffi::Span<const int64_t> seq, int64_t hidden,
                       int64_t width) {
  if (seq.size() != 3 || (batch_major != 0 && batch_major != 1))
    return ffi::Error::InvalidArgument("mmzoo_rnn: expected [T, B, F] or [B, T, F] inputs");
  if (hidden <= 0 || hidden % 64 != 0)
    return ffi::Error::InvalidArgument("mmzoo_rnn: hidden size must be a multiple of 64");
  if (seq[2] != width)
    return ffi::Error::InvalidArgument("mmzoo_rnn: inputs and weights disagree");
  return ffi::Error::Success();
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> xw, ffi::Buffer<ffi::F32> w_ih,
                   ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> w_hh,
                   ffi::Buffer<ffi::F32> h0, ffi::Buffer<ffi::F32> c0,
                   ffi::ResultBuffer<ffi::F32> hs, ffi::ResultBuffer<ffi::F32> cs,
                   ffi::ResultBuffer<ffi::F32> act, int64_t batch_major, int64_t max_threads) {
  const auto dims = xw.dimensions();
  const int64_t hidden = w_hh.dimensions()[0];
  // With w_ih [I, 4H], xw is x [.., I] and the projection happens here; with
  // an empty w_ih, xw is the projection [.., 4H].
  const int64_t in = w_ih.element_count() ? w_ih.dimensions()[0] : 0;
  if (ffi::Error error = CheckShapes(batch_major, dims, hidden, in ? in : 4 * hidden);
      error.failure())
    return error;
  if (in && w_ih.dimensions()[1] != 4 * hidden)
    return ffi::Error::InvalidArgument("mmzoo_lstm_forward: inputs and weights disagree");
  if (bias.element_count() != static_cast<size_t>(4 * hidden))
    return ffi::Error::InvalidArgument("mmzoo_lstm_forward: the bias must have 4H entries");
  const int64_t steps = dims[batch_major], batch = dims[1 - batch_major];
  if (steps == 0 || batch == 0) return ffi::Error::Success();
  const int64_t depth = in + hidden;
  float* packed = Scratch(0, 4 * hidden * depth);
  if (!packed) return NoScratch();
  if (in) PackForward(w_ih.typed_data(), in, hidden, 4, depth, packed);
  PackForward(w_hh.typed_data(), hidden, hidden, 4, depth, packed + in * 64);
  const Strides sx = StridesOf(batch_major, steps, batch, dims[2]);
  const Strides s4 = StridesOf(batch_major, steps, batch, 4 * hidden);
  const Strides s1 = StridesOf(batch_major, steps, batch, hidden);
  const bool save = act->element_count() > 0;
  const float* x = xw.typed_data();
  const float* b_all = bias.typed_data();
  const float* wp = packed;
  const float *h_init = h0.typed_data(), *c_init = c0.typed_data();
  float *h_out = hs->typed_data(), *c_out = cs->typed_data(), *a_out = act->typed_data();

  const int64_t units = hidden / 16, workers = Workers(pool, max_threads, units);
  // Unit u of step t: hidden units 16u .. 16u + 15 of every row.
  auto unit = [=](int64_t t, int64_t u) {
    const float* h_prev = t ? h_out + (t - 1) * s1.step : h_init;
    const float* c_prev = t ? c_out + (t - 1) * s1.step : c_init;
    const int64_t prev_row = t ? s1.row : hidden;
    const float* panel = wp + u * depth * 64;
    const float* next = wp + (u + workers) % units * depth * 64;
    const int64_t j = u * 16;
    const float* bias_j = b_all + j;  // loaded per row: held in registers, it spills the tile's
    const float* x_t = x + t * sx.step;
    ForRowTiles(batch, [&]<int MR>(int64_t r0, int64_t tile) {
      if (!in) PrefetchProjection<MR>(x_t, sx.row, r0, j, hidden, 4);
      __m512 acc[MR][4];
      Tile<MR>(x_t + r0 * sx.row, sx.row, in, h_prev + r0 * prev_row, prev_row, hidden, panel,
               PrefetchSlice(next, depth * 64, RowTiles(batch), tile), acc);
      for (int r = 0; r < MR; ++r) {
        const int64_t b = r0 + r;
        const float* xr = x_t + b * sx.row + j;
        const auto pre = [&](int gate) {
          const __m512 z = _mm512_add_ps(acc[r][gate], _mm512_loadu_ps(bias_j + gate * hidden));
          return in ? z : _mm512_add_ps(z, _mm512_loadu_ps(xr + gate * hidden));
        };
        const __m512 i = Sigmoid(pre(0)), f = Sigmoid(pre(1)), g = Tanh(pre(2)),
                     o = Sigmoid(pre(3));
        const __m512 c = _mm512_fmadd_ps(f, _mm512_loadu_ps(c_prev + b * prev_row + j),
                                         _mm512_mul_ps(i, g));
        _mm512_storeu_ps(c_out + t * s1.step + b * s1.row + j, c);
        _mm512_storeu_ps(h_out + t * s1.step + b * s1.row + j, _mm512_mul_ps(o, Tanh(c)));
        if (save) {
          float* ar = a_out + t * s4.step + b * s4.row + j;
          _mm512_storeu_ps(ar, i);
          _mm512_storeu_ps(ar + hidden, f);
          _mm512_storeu_ps(ar + 2 * hidden, g);
          _mm512_storeu_ps(ar + 3 * hidden, o);
        }
      }
    });
  };
  RunPhases(pool, max_threads, steps, units, unit);
  return ffi::Error::Success();
}

ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> act, ffi::Buffer<ffi::F32> cs,
                    ffi::Buffer<ffi::F32> c0, ffi::Buffer<ffi::F32> w_ih, ffi::Buffer<ffi::F32> w_hh,
                    ffi::Buffer<ffi::F32> d_hs, ffi::Buffer<ffi::F32> d_hT,
                    ffi::Buffer<ffi::F32> d_cT, ffi::ResultBuffer<ffi::F32> dz,
                    ffi::ResultBuffer<ffi::F32> d_h0, ffi::ResultBuffer<ffi::F32> d_c0,
                    ffi::ResultBuffer<ffi::F32> d_b_rows, ffi::ResultBuffer<ffi::F32> dx,
                    int64_t batch_major,
                    int64_t max_threads) {
  const auto dims = act.dimensions();
  const int64_t hidden = w_hh.dimensions()[0];
  if (ffi::Error error = CheckShapes(batch_major, dims, hidden, 4 * hidden); error.failure())
    return error;
  const int64_t steps = dims[batch_major], batch = dims[1 - batch_major];
  if (batch == 0) return ffi::Error::Success();
  const int64_t in = w_ih.element_count() ? w_ih.dimensions()[0] : 0;
  if (in % 64 != 0 || (in && w_ih.dimensions()[1] != 4 * hidden) ||
      dx->element_count() != static_cast<size_t>(steps * batch * in))
    return ffi::Error::InvalidArgument("mmzoo_lstm_backward: w_ih and dx disagree");
  float* packed = Scratch(1, 4 * hidden * (hidden + in));
  if (!packed) return NoScratch();
  PackBackward(w_hh.typed_data(), hidden, 4 * hidden, packed);
  if (in) PackBackward(w_ih.typed_data(), in, 4 * hidden, packed + 4 * hidden * hidden);
  const Strides sx = StridesOf(batch_major, steps, batch, in);
  float* dx_out = dx->typed_data();
  // The carries dh, dc: [B, H] each.
  float* dh = Scratch(2, 2 * batch * hidden);
  if (!dh) return NoScratch();
  float* dc = dh + batch * hidden;
  std::memcpy(dh, d_hT.typed_data(), batch * hidden * sizeof(float));
  std::memcpy(dc, d_cT.typed_data(), batch * hidden * sizeof(float));
  const Strides s4 = StridesOf(batch_major, steps, batch, 4 * hidden);
  const Strides s1 = StridesOf(batch_major, steps, batch, hidden);
  const float *a_in = act.typed_data(), *c_in = cs.typed_data(), *c_init = c0.typed_data();
  const float* dy = d_hs.typed_data();
  const float* wp = packed;
  float* dz_out = dz->typed_data();

  // Phase 2q handles step t = T-1-q's gates (dz_t, dc := dc_t f, and
  // d_b_rows += dz_t), unit u taking a share of the rows, all hidden units:
  // each row's act, c and dy are contiguous there, which the hardware
  // prefetcher streams (per 64-unit column blocks, the same phase took 2.5x
  // as long). Phase 2q+1 computes dh := dz_t W_hh^T, unit u the output
  // columns 64u .. 64u + 63 of every row, which the next elementwise phase
  // reads. (Splitting these rows as well, into finer units, was slower: each
  // part streams the unit's whole 4H x 64 panel again.)
  float* db = d_b_rows->typed_data();
  std::memset(db, 0, batch * 4 * hidden * sizeof(float));
  const int64_t units = (hidden + in) / 64, workers = Workers(pool, max_threads, units);
  const int64_t rows_per_unit = (batch + units - 1) / units;
  auto unit = [=](int64_t phase, int64_t u) {
    const int64_t t = steps - 1 - phase / 2;
    float* dz_t = dz_out + t * s4.step;
    if (phase % 2 == 1) {
      BackwardProducts(wp, 4 * hidden, u, units, workers, hidden, batch, dz_t, dz_t, s4.row, dh,
                       dx_out + t * sx.step, sx.row, /*add_to_dh=*/false);
      return;
    }
    const int64_t b_begin = std::min(batch, u * rows_per_unit);
    const int64_t b_end = std::min(batch, b_begin + rows_per_unit);
    const __m512 one = _mm512_set1_ps(1.0f);
    const float* c_prev = t ? c_in + (t - 1) * s1.step : c_init;
    const int64_t prev_row = t ? s1.row : hidden;
    for (int64_t b = b_begin; b < b_end; ++b) {
      for (int64_t j = 0; j < hidden; j += 16) {
        const float* a = a_in + t * s4.step + b * s4.row + j;  // read before dz overwrites it
        const __m512 i = _mm512_loadu_ps(a), f = _mm512_loadu_ps(a + hidden),
                     g = _mm512_loadu_ps(a + 2 * hidden), o = _mm512_loadu_ps(a + 3 * hidden);
        const __m512 tc = Tanh(_mm512_loadu_ps(c_in + t * s1.step + b * s1.row + j));
        const __m512 dhv = _mm512_add_ps(_mm512_loadu_ps(dh + b * hidden + j),
                                         _mm512_loadu_ps(dy + t * s1.step + b * s1.row + j));
        const __m512 dcv = _mm512_fmadd_ps(_mm512_mul_ps(dhv, o), _mm512_fnmadd_ps(tc, tc, one),
                                           _mm512_loadu_ps(dc + b * hidden + j));
        const __m512 cp = _mm512_loadu_ps(c_prev + b * prev_row + j);
        // d sigmoid = s (1 - s) = s - s^2;  d tanh = 1 - t^2.
        const __m512 d[4] = {
            _mm512_mul_ps(_mm512_mul_ps(dcv, g), _mm512_fnmadd_ps(i, i, i)),
            _mm512_mul_ps(_mm512_mul_ps(dcv, cp), _mm512_fnmadd_ps(f, f, f)),
            _mm512_mul_ps(_mm512_mul_ps(dcv, i), _mm512_fnmadd_ps(g, g, one)),
            _mm512_mul_ps(_mm512_mul_ps(dhv, tc), _mm512_fnmadd_ps(o, o, o))};
        for (int gate = 0; gate < 4; ++gate) {
          _mm512_storeu_ps(dz_t + b * s4.row + j + gate * hidden, d[gate]);
          float* sum = db + b * 4 * hidden + j + gate * hidden;
          _mm512_storeu_ps(sum, _mm512_add_ps(_mm512_loadu_ps(sum), d[gate]));
        }
        _mm512_storeu_ps(dc + b * hidden + j, _mm512_mul_ps(dcv, f));
      }
    }
  };
  RunPhases(pool, max_threads, 2 * steps, units, unit);
  std::memcpy(d_h0->typed_data(), dh, batch * hidden * sizeof(float));
  std::memcpy(d_c0->typed_data(), dc, batch * hidden * sizeof(float));
  return ffi::Error::Success();
}

// --- GRU ---------------------------------------------------------------------------------

// Columns of W_ih [I, 3H] and W_hh [H, 3H]: [r, z, n]. A forward tile keeps
// four accumulators per row, [r, z, n_x, n_h]: x's panel rows feed r, z and
// n_x, h's feed r, z and n_h, since n = tanh(n_x + b_in + r (n_h + b_hn)).
using GruX = Cols<0, 1, 2>;
using GruH = Cols<0, 1, 3>;

ffi::Error GruForward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> xw, ffi::Buffer<ffi::F32> w_ih,
                      ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> w_hh,
                      ffi::Buffer<ffi::F32> h0, ffi::ResultBuffer<ffi::F32> hs,
                      ffi::ResultBuffer<ffi::F32> act, int64_t batch_major, int64_t max_threads) {
  const auto dims = xw.dimensions();
  const int64_t hidden = w_hh.dimensions()[0];
  const int64_t in = w_ih.element_count() ? w_ih.dimensions()[0] : 0;
  if (ffi::Error error = CheckShapes(batch_major, dims, hidden, in ? in : 3 * hidden);
      error.failure())
    return error;
  if (w_hh.dimensions()[1] != 3 * hidden || (in && w_ih.dimensions()[1] != 3 * hidden))
    return ffi::Error::InvalidArgument("mmzoo_gru_forward: inputs and weights disagree");
  if (bias.element_count() != static_cast<size_t>(4 * hidden))
    return ffi::Error::InvalidArgument("mmzoo_gru_forward: the bias must have 4H entries");
  const int64_t steps = dims[batch_major], batch = dims[1 - batch_major];
  if (steps == 0 || batch == 0) return ffi::Error::Success();
  const int64_t depth = in + hidden;
  float* packed = Scratch(0, 3 * hidden * depth);
  if (!packed) return NoScratch();
  if (in) PackForward(w_ih.typed_data(), in, hidden, 3, depth, packed);
  PackForward(w_hh.typed_data(), hidden, hidden, 3, depth, packed + in * 48);
  const Strides sx = StridesOf(batch_major, steps, batch, dims[2]);
  const Strides s4 = StridesOf(batch_major, steps, batch, 4 * hidden);
  const Strides s1 = StridesOf(batch_major, steps, batch, hidden);
  const bool save = act->element_count() > 0;
  const float* x = xw.typed_data();
  const float* b_all = bias.typed_data();
  const float* wp = packed;
  const float* h_init = h0.typed_data();
  float *h_out = hs->typed_data(), *a_out = act->typed_data();

  const int64_t units = hidden / 16, workers = Workers(pool, max_threads, units);
  // Unit u of step t: hidden units 16u .. 16u + 15 of every row.
  auto unit = [=](int64_t t, int64_t u) {
    const float* h_prev = t ? h_out + (t - 1) * s1.step : h_init;
    const int64_t prev_row = t ? s1.row : hidden;
    const float* panel = wp + u * depth * 48;
    const float* next = wp + (u + workers) % units * depth * 48;
    const int64_t j = u * 16;
    const float* x_t = x + t * sx.step;
    ForRowTiles(batch, [&]<int MR>(int64_t r0, int64_t tile) {
      if (!in) PrefetchProjection<MR>(x_t, sx.row, r0, j, hidden, 3);
      __m512 acc[MR][4];
      Tile<MR, GruX, GruH>(x_t + r0 * sx.row, sx.row, in, h_prev + r0 * prev_row, prev_row,
                           hidden, panel, PrefetchSlice(next, depth * 48, RowTiles(batch), tile), acc);
      for (int r = 0; r < MR; ++r) {
        const int64_t b = r0 + r;
        const float* xr = x_t + b * sx.row + j;
        const auto pre = [&](int q) {  // q: r, z, n_x, n_h
          const __m512 v = _mm512_add_ps(acc[r][q], _mm512_loadu_ps(b_all + j + q * hidden));
          return in || q == 3 ? v : _mm512_add_ps(v, _mm512_loadu_ps(xr + q * hidden));
        };
        const __m512 rg = Sigmoid(pre(0)), zg = Sigmoid(pre(1)), hn = pre(3);
        const __m512 n = Tanh(_mm512_fmadd_ps(rg, hn, pre(2)));
        const __m512 hp = _mm512_loadu_ps(h_prev + b * prev_row + j);
        // h' = (1 - z) n + z h = n + z (h - n)
        _mm512_storeu_ps(h_out + t * s1.step + b * s1.row + j,
                         _mm512_fmadd_ps(zg, _mm512_sub_ps(hp, n), n));
        if (save) {
          float* ar = a_out + t * s4.step + b * s4.row + j;
          _mm512_storeu_ps(ar, rg);
          _mm512_storeu_ps(ar + hidden, zg);
          _mm512_storeu_ps(ar + 2 * hidden, n);
          _mm512_storeu_ps(ar + 3 * hidden, hn);
        }
      }
    });
  };
  RunPhases(pool, max_threads, steps, units, unit);
  return ffi::Error::Success();
}

ffi::Error GruBackward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> act, ffi::Buffer<ffi::F32> hs,
                       ffi::Buffer<ffi::F32> h0, ffi::Buffer<ffi::F32> w_ih,
                       ffi::Buffer<ffi::F32> w_hh, ffi::Buffer<ffi::F32> d_hs,
                       ffi::Buffer<ffi::F32> d_hT, ffi::ResultBuffer<ffi::F32> dxw,
                       ffi::ResultBuffer<ffi::F32> dhw, ffi::ResultBuffer<ffi::F32> d_h0,
                       ffi::ResultBuffer<ffi::F32> d_b_rows, ffi::ResultBuffer<ffi::F32> dx,
                       int64_t batch_major, int64_t max_threads) {
  const auto dims = act.dimensions();
  const int64_t hidden = w_hh.dimensions()[0];
  if (ffi::Error error = CheckShapes(batch_major, dims, hidden, 4 * hidden); error.failure())
    return error;
  const int64_t steps = dims[batch_major], batch = dims[1 - batch_major];
  if (batch == 0) return ffi::Error::Success();
  const int64_t in = w_ih.element_count() ? w_ih.dimensions()[0] : 0;
  if (in % 64 != 0 || (in && w_ih.dimensions()[1] != 3 * hidden) ||
      dx->element_count() != static_cast<size_t>(steps * batch * in))
    return ffi::Error::InvalidArgument("mmzoo_gru_backward: w_ih and dx disagree");
  float* packed = Scratch(1, 3 * hidden * (hidden + in));
  if (!packed) return NoScratch();
  PackBackward(w_hh.typed_data(), hidden, 3 * hidden, packed);
  if (in) PackBackward(w_ih.typed_data(), in, 3 * hidden, packed + 3 * hidden * hidden);
  float* dh = Scratch(2, batch * hidden);  // [B, H]
  if (!dh) return NoScratch();
  std::memcpy(dh, d_hT.typed_data(), batch * hidden * sizeof(float));
  const Strides sx = StridesOf(batch_major, steps, batch, in);
  const Strides s4 = StridesOf(batch_major, steps, batch, 4 * hidden);
  const Strides s3 = StridesOf(batch_major, steps, batch, 3 * hidden);
  const Strides s1 = StridesOf(batch_major, steps, batch, hidden);
  const float *a_in = act.typed_data(), *h_in = hs.typed_data(), *h_init = h0.typed_data();
  const float* dy = d_hs.typed_data();
  const float* wp = packed;
  float *dxw_out = dxw->typed_data(), *dhw_out = dhw->typed_data(), *dx_out = dx->typed_data();
  float* db = d_b_rows->typed_data();
  std::memset(db, 0, batch * 4 * hidden * sizeof(float));

  // As the LSTM's: phase 2q, step t = T-1-q's gate gradients, unit u a share
  // of the rows; the direct path dh z goes to dh. Phase 2q+1: dh += dhw_t
  // W_hh^T and dx_t := dxw_t W_ih^T, unit u 64 output columns.
  const int64_t units = (hidden + in) / 64, workers = Workers(pool, max_threads, units);
  const int64_t rows_per_unit = (batch + units - 1) / units;
  auto unit = [=](int64_t phase, int64_t u) {
    const int64_t t = steps - 1 - phase / 2;
    if (phase % 2 == 1) {
      BackwardProducts(wp, 3 * hidden, u, units, workers, hidden, batch, dhw_out + t * s3.step,
                       dxw_out + t * s3.step, s3.row, dh, dx_out + t * sx.step, sx.row,
                       /*add_to_dh=*/true);
      return;
    }
    const int64_t b_begin = std::min(batch, u * rows_per_unit);
    const int64_t b_end = std::min(batch, b_begin + rows_per_unit);
    const __m512 one = _mm512_set1_ps(1.0f);
    const float* h_prev = t ? h_in + (t - 1) * s1.step : h_init;
    const int64_t prev_row = t ? s1.row : hidden;
    for (int64_t b = b_begin; b < b_end; ++b) {
      for (int64_t j = 0; j < hidden; j += 16) {
        const float* a = a_in + t * s4.step + b * s4.row + j;
        const __m512 r = _mm512_loadu_ps(a), z = _mm512_loadu_ps(a + hidden),
                     n = _mm512_loadu_ps(a + 2 * hidden), hn = _mm512_loadu_ps(a + 3 * hidden);
        const __m512 hp = _mm512_loadu_ps(h_prev + b * prev_row + j);
        const __m512 dhv = _mm512_add_ps(_mm512_loadu_ps(dh + b * hidden + j),
                                         _mm512_loadu_ps(dy + t * s1.step + b * s1.row + j));
        // d sigmoid = s (1 - s) = s - s^2;  d tanh = 1 - t^2.
        const __m512 dn = _mm512_mul_ps(_mm512_mul_ps(dhv, _mm512_sub_ps(one, z)),
                                        _mm512_fnmadd_ps(n, n, one));
        const __m512 d[4] = {
            _mm512_mul_ps(_mm512_mul_ps(dn, hn), _mm512_fnmadd_ps(r, r, r)),
            _mm512_mul_ps(_mm512_mul_ps(dhv, _mm512_sub_ps(hp, n)), _mm512_fnmadd_ps(z, z, z)),
            dn, _mm512_mul_ps(dn, r)};
        float* xo = dxw_out + t * s3.step + b * s3.row + j;
        float* ho = dhw_out + t * s3.step + b * s3.row + j;
        for (int q = 0; q < 3; ++q) {
          _mm512_storeu_ps(xo + q * hidden, d[q]);
          _mm512_storeu_ps(ho + q * hidden, d[q == 2 ? 3 : q]);
        }
        for (int q = 0; q < 4; ++q) {
          float* sum = db + b * 4 * hidden + j + q * hidden;
          _mm512_storeu_ps(sum, _mm512_add_ps(_mm512_loadu_ps(sum), d[q]));
        }
        _mm512_storeu_ps(dh + b * hidden + j, _mm512_mul_ps(dhv, z));
      }
    }
  };
  RunPhases(pool, max_threads, 2 * steps, units, unit);
  std::memcpy(d_h0->typed_data(), dh, batch * hidden * sizeof(float));
  return ffi::Error::Success();
}

// --- Weight gradients: c = a^T b over all rows -------------------------------------------

// c[MR rows, 64 columns] := (c + with `add`) sum_k a[k][r] b[k][q] over kc rows
// k of A~ ([kc][MR]: MR columns of a, packed per row) and B~ ([kc][64]: 64
// columns of b, packed, aligned).
template <int MR>
__attribute__((noinline)) void TileTN(const float* __restrict a, const float* __restrict b,
                                      int64_t kc, float* c, int64_t ldc, bool add) {
  __m512 acc[MR][4];
  for (int r = 0; r < MR; ++r)
    for (int q = 0; q < 4; ++q) acc[r][q] = _mm512_setzero_ps();
  for (int64_t k = 0; k < kc; ++k) {
    __m512 bv[4];
    for (int q = 0; q < 4; ++q) bv[q] = _mm512_load_ps(b + k * 64 + 16 * q);
    for (int r = 0; r < MR; ++r) {
      const __m512 av = _mm512_set1_ps(a[k * MR + r]);
      for (int q = 0; q < 4; ++q) acc[r][q] = _mm512_fmadd_ps(av, bv[q], acc[r][q]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int q = 0; q < 4; ++q) {
      float* o = c + r * ldc + 16 * q;
      _mm512_storeu_ps(o, add ? _mm512_add_ps(acc[r][q], _mm512_loadu_ps(o)) : acc[r][q]);
    }
}

// [dw_x; dw_h] = [x | h_prev]^T d over all rows, h_prev the state before each
// row's step (h0 at a sequence's first, hs of the step before after), without
// [x | h_prev] ever written out; see the header. In chunks of kChunkRows rows:
// per chunk, one phase packs the rows of [x | h_prev] into A~ slivers of
// kBlockRows rows (units share the blocks), then unit u computes columns 64u ..
// 64u + 63: per block it packs those columns of d (B~, in L1/L2) and runs one
// TileTN per row tile of [dw_x; dw_h] (x's columns and h's never share a
// tile), whose column panel stays in L2 over the whole chunk. (Paired with
// XLA's dot in one jit, 3200 rows, two threads: 1.1-1.3x as fast, before h_prev
// was read in place; benchmarks/RESULTS.md, rnn_layer.)
constexpr int64_t kBlockRows = 384, kChunkRows = 4096;

// Calls fn.template operator()<MR>(column, row) over ForRowTiles' tiles of
// `in` columns, then of `hidden` more, numbered on from `in`.
template <class Fn>
inline void ForSegmentTiles(int64_t in, int64_t hidden, const Fn& fn) {
  ForRowTiles(in, [&]<int MR>(int64_t r0, int64_t) { fn.template operator()<MR>(r0); });
  ForRowTiles(hidden, [&]<int MR>(int64_t r0, int64_t) { fn.template operator()<MR>(in + r0); });
}

ffi::Error WeightGrads(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> hs,
                       ffi::Buffer<ffi::F32> h0, ffi::Buffer<ffi::F32> d,
                       ffi::ResultBuffer<ffi::F32> dw_x, ffi::ResultBuffer<ffi::F32> dw_h,
                       int64_t batch_major, int64_t max_threads) {
  const auto dd = d.dimensions(), dxd = x.dimensions(), dhd = hs.dimensions();
  if (dd.size() != 3 || dxd.size() != 3 || dhd.size() != 3 || (batch_major != 0 && batch_major != 1))
    return ffi::Error::InvalidArgument("mmzoo_weight_grads: expected [T, B, F] or [B, T, F] inputs");
  const int64_t steps = dd[batch_major], batch = dd[1 - batch_major];
  const int64_t in = dxd[2], hidden = dhd[2], n = dd[2], m = in + hidden, rows = steps * batch;
  if (n % 64 != 0 || !std::equal(dd.begin(), dd.end() - 1, dxd.begin()) ||
      !std::equal(dd.begin(), dd.end() - 1, dhd.begin()) ||
      h0.element_count() != static_cast<size_t>(batch * hidden))
    return ffi::Error::InvalidArgument(
        "mmzoo_weight_grads: x, hs, h0 and d disagree, or d's width is not a multiple of 64");
  float *out_x = dw_x->typed_data(), *out_h = dw_h->typed_data();
  if (rows == 0 || m == 0 || n == 0) {
    std::memset(out_x, 0, in * n * sizeof(float));
    std::memset(out_h, 0, hidden * n * sizeof(float));
    return ffi::Error::Success();
  }
  const float *x_in = x.typed_data(), *hs_in = hs.typed_data(), *h_init = h0.typed_data();
  const float* d_in = d.typed_data();
  // h_prev of row `row` (rows in memory order: [B, T] batch-major, else [T, B]).
  auto h_prev = [=](int64_t row) {
    if (batch_major) {
      return row % steps ? hs_in + (row - 1) * hidden : h_init + row / steps * hidden;
    }
    return row >= batch ? hs_in + (row - batch) * hidden : h_init + row * hidden;
  };
  const int64_t chunk = std::min(kChunkRows, rows), chunks = (rows + chunk - 1) / chunk;
  float* packed = Scratch(0, m * chunk);  // A~ of one chunk: per block, per row tile [kc][MR]
  if (!packed) return NoScratch();
  const int64_t panels = n / 64;
  auto unit = [=](int64_t phase, int64_t u) {
    const int64_t c0 = phase / 2 * chunk, rows_c = std::min(chunk, rows - c0);
    const int64_t blocks = (rows_c + kBlockRows - 1) / kBlockRows;
    if (phase % 2 == 0) {  // pack blocks u, u + panels, ...
      for (int64_t kb = u; kb < blocks; kb += panels) {
        const int64_t k0 = kb * kBlockRows, kc = std::min(kBlockRows, rows_c - k0);
        ForSegmentTiles(in, hidden, [&]<int MR>(int64_t r0) {
          float* dst = packed + k0 * m + r0 * kc;
          for (int64_t k = 0; k < kc; ++k) {
            const int64_t row = c0 + k0 + k;
            const float* src = r0 < in ? x_in + row * in + r0 : h_prev(row) + (r0 - in);
            std::memcpy(dst + k * MR, src, MR * sizeof(float));
          }
        });
      }
      return;
    }
    float* panel = Scratch(1, kBlockRows * 64);  // this thread's B~
    for (int64_t kb = 0; kb < blocks; ++kb) {
      const int64_t k0 = kb * kBlockRows, kc = std::min(kBlockRows, rows_c - k0);
      for (int64_t k = 0; k < kc; ++k)
        std::memcpy(panel + k * 64, d_in + (c0 + k0 + k) * n + u * 64, 64 * sizeof(float));
      ForSegmentTiles(in, hidden, [&]<int MR>(int64_t r0) {
        float* c = r0 < in ? out_x + r0 * n : out_h + (r0 - in) * n;
        TileTN<MR>(packed + k0 * m + r0 * kc, panel, kc, c + u * 64, n, c0 + k0 > 0);
      });
    }
  };
  RunPhases(pool, max_threads, 2 * chunks, panels, unit);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MmzooLstmForward, Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // xw, or x
                                  .Arg<ffi::Buffer<ffi::F32>>()   // w_ih, or empty
                                  .Arg<ffi::Buffer<ffi::F32>>()   // bias
                                  .Arg<ffi::Buffer<ffi::F32>>()   // w_hh
                                  .Arg<ffi::Buffer<ffi::F32>>()   // h0
                                  .Arg<ffi::Buffer<ffi::F32>>()   // c0
                                  .Ret<ffi::Buffer<ffi::F32>>()   // hs
                                  .Ret<ffi::Buffer<ffi::F32>>()   // cs
                                  .Ret<ffi::Buffer<ffi::F32>>()   // act
                                  .Attr<int64_t>("batch_major")
                                  .Attr<int64_t>("max_threads"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(MmzooLstmBackward, Backward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // act
                                  .Arg<ffi::Buffer<ffi::F32>>()   // cs
                                  .Arg<ffi::Buffer<ffi::F32>>()   // c0
                                  .Arg<ffi::Buffer<ffi::F32>>()   // w_ih, or empty
                                  .Arg<ffi::Buffer<ffi::F32>>()   // w_hh
                                  .Arg<ffi::Buffer<ffi::F32>>()   // d_hs
                                  .Arg<ffi::Buffer<ffi::F32>>()   // d_hT
                                  .Arg<ffi::Buffer<ffi::F32>>()   // d_cT
                                  .Ret<ffi::Buffer<ffi::F32>>()   // dz
                                  .Ret<ffi::Buffer<ffi::F32>>()   // d_h0
                                  .Ret<ffi::Buffer<ffi::F32>>()   // d_c0
                                  .Ret<ffi::Buffer<ffi::F32>>()   // d_b_rows
                                  .Ret<ffi::Buffer<ffi::F32>>()   // dx, or empty
                                  .Attr<int64_t>("batch_major")
                                  .Attr<int64_t>("max_threads"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(MmzooGruForward, GruForward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // xw, or x
                                  .Arg<ffi::Buffer<ffi::F32>>()   // w_ih, or empty
                                  .Arg<ffi::Buffer<ffi::F32>>()   // bias [4H]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // w_hh
                                  .Arg<ffi::Buffer<ffi::F32>>()   // h0
                                  .Ret<ffi::Buffer<ffi::F32>>()   // hs
                                  .Ret<ffi::Buffer<ffi::F32>>()   // act
                                  .Attr<int64_t>("batch_major")
                                  .Attr<int64_t>("max_threads"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(MmzooGruBackward, GruBackward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // act
                                  .Arg<ffi::Buffer<ffi::F32>>()   // hs
                                  .Arg<ffi::Buffer<ffi::F32>>()   // h0
                                  .Arg<ffi::Buffer<ffi::F32>>()   // w_ih, or empty
                                  .Arg<ffi::Buffer<ffi::F32>>()   // w_hh
                                  .Arg<ffi::Buffer<ffi::F32>>()   // d_hs
                                  .Arg<ffi::Buffer<ffi::F32>>()   // d_hT
                                  .Ret<ffi::Buffer<ffi::F32>>()   // dxw
                                  .Ret<ffi::Buffer<ffi::F32>>()   // dhw
                                  .Ret<ffi::Buffer<ffi::F32>>()   // d_h0
                                  .Ret<ffi::Buffer<ffi::F32>>()   // d_b_rows
                                  .Ret<ffi::Buffer<ffi::F32>>()   // dx, or empty
                                  .Attr<int64_t>("batch_major")
                                  .Attr<int64_t>("max_threads"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(MmzooWeightGrads, WeightGrads,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // x, or [.., 0]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // hs, or [.., 0]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // h0
                                  .Arg<ffi::Buffer<ffi::F32>>()   // d
                                  .Ret<ffi::Buffer<ffi::F32>>()   // dw_x
                                  .Ret<ffi::Buffer<ffi::F32>>()   // dw_h
                                  .Attr<int64_t>("batch_major")
                                  .Attr<int64_t>("max_threads"));
