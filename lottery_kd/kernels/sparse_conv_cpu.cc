// Masked convolutions that skip pruned weights (NHWC or NCHW activations, HWIO kernels, float32,
// kernel size 1 or 3 with padding 0 or 1, stride 1 or 2), for XLA:CPU through the XLA FFI; called
// by lottery_kd/kernels/sparse_conv.py.
//
// Why: a lottery ticket at density ~0.1 does a tenth of the dense network's multiply-adds, but
// XLA's convolution (and the dense kernels of conv3x3_cpu.cc) cannot skip the zeros. The masks are
// unstructured, so at density 0.1 nearly every 16-wide vector of output channels at a (kh,kw,c)
// position still holds a nonzero: skipping zero vectors of the HWIO kernel gains nothing. These
// kernels vectorise over PIXELS instead:
//   * each image is moved to channel-major, zero-padded "phase planes" in a thread-local
//     buffer (stride 2 splits rows and columns into even/odd phases), so that for every tap
//     (kh,kw) the pixels an output row needs are contiguous: a convolution becomes, per output
//     channel, a sum over the nonzero weights of  weight * (input plane shifted by a constant);
//   * the output is computed channel-major, 16 pixels per vector, a tile of several vectors in
//     registers (one splat(weight) x shifted load per nonzero and vector), then moved back;
//   * an NHWC image is transposed on the way in and out; an NCHW one is copied row by row
//     (sparse_layout.h; a small saving, measured there);
//   * the lists of nonzeros are built inside each call from the operands (9*C*K values), and each
//     call measures the layer's density and runs the dense kernels of conv3x3_cpu.cc instead
//     above a crossover density (where they apply), so callers need no trace-time knowledge.
// Output rows are computed over the padded row pitch; the few extra columns are discarded.
// The thread-local buffers are cleared once per call and thread, not per image (PaddedBuffer),
// and masked_conv's VJP runs both gradients in one call (BackwardImpl) that transposes dy once
// per image for both where both are sparse.
//
// Determinism: every output element is summed in a fixed order that does not depend on the number
// of threads (the filter gradient sums fixed image blocks, then adds the blocks in order).
#include <immintrin.h>

#include <array>
#include <atomic>
#include <cstring>
#include <utility>

#include "conv3x3_cpu.cc"  // the dense kernels (Forward, FilterGrad): the path above the crossover
#include "sparse_layout.h"  // moving activations (NHWC or NCHW) to and from channel-major rows

namespace lottery_kd_sparse {

using namespace lottery_kd;  // NOLINT: the shared vector helpers

// Densities (nonzero weights / all weights) above which the dense kernels run instead, where they
// apply (3x3, padding 1, a multiple of 16 output channels; stride 1 only for the input gradient).
// Measured with benchmarks/sparse_conv.py (batch 128, the five 3x3 CIFAR ResNet shapes, AVX-512
// EPYC, 2 cores shared with a training job: noisy; benchmarks/results/
// sparse_conv_cpu_under_load_v2_2026-12-03.json). Sparse / dense speed-up, range over the shapes:
//                  0.5        0.3        0.2        0.1074     0.05       0.02
//   forward        0.65-0.81  1.03-1.22  1.20-1.73  1.65-2.44  1.96-3.87  2.15-5.69
//   input grad s1  0.66-0.84  1.08-1.25  1.43-1.52  1.64-2.41  2.26-3.89  2.40-4.60
//   filter grad    0.48-0.68  0.81-1.20  1.12-1.35  1.56-2.10  1.93-3.99  2.03-6.40
// (the stride-2 input gradient, against XLA: 1.09-3.00 at 0.5, so always sparse), so the forward
// and input-gradient crossovers sit just above 0.3, the filter gradient's between 0.2 and 0.3 (its
// sparse dot products load two vectors per multiply-add).
constexpr float kForwardCrossover = 0.3f;
constexpr float kInputGradCrossover = 0.3f;
constexpr float kFilterGradCrossover = 0.25f;

#ifdef __AVX512F__
constexpr int kTile = 12;     // output vectors in registers (32 zmm registers)
constexpr int kDotTile = 8;   // filter-gradient dot products in registers
#else
constexpr int kTile = 6;      // a v16 is two ymm registers: 12 of the 16
constexpr int kDotTile = 4;
#endif

int64_t RoundUp16(int64_t v) { return (v + 15) / 16 * 16; }

// The layer and the buffer layouts derived from it.
struct Geometry {
  int64_t n, h, w, c, k;  // input [n,h,w,c], k output channels
  int64_t r, s, p;        // kernel size, stride, padding
  int64_t oh, ow;         // output size
  int64_t hq, wq;         // rows and pitch of a phase plane of the padded input
  int64_t ps;             // floats per phase plane (hq * wq and 16 of slack for TransposeIn)
  int64_t x_cs;           // floats per input channel in the phase-plane buffer (s*s planes)
  int64_t y_len;          // floats per output channel, flat over (oh, wq), a multiple of 16
  Layout lx, ly;          // where an image's input and output values are (NHWC or NCHW)
};

Geometry MakeGeometry(int64_t n, int64_t h, int64_t w, int64_t c, int64_t k, int64_t r, int64_t s,
                      int64_t p, bool channel_major) {
  Geometry g{n, h, w, c, k, r, s, p};
  g.lx = ImageLayout(channel_major, c, h, w);
  g.oh = (h + 2 * p - r) / s + 1;
  g.ow = (w + 2 * p - r) / s + 1;
  g.ly = ImageLayout(channel_major, k, g.oh, g.ow);
  g.hq = (h + 2 * p + s - 1) / s;
  g.wq = (w + 2 * p + s - 1) / s;
  g.ps = g.hq * g.wq + 16;
  g.y_len = RoundUp16(g.oh * g.wq);
  int64_t reach = (r - 1) / s;  // the largest tap shift inside a plane, in rows and in columns
  g.x_cs = RoundUp16(std::max(s * s * g.ps, (s * s - 1) * g.ps + g.y_len + reach * g.wq + reach));
  return g;
}

// A thread-local buffer whose zero padding survives from image to image: every image of a call
// rewrites the same data places (the transposes' trailing zeros land in padding or in places
// written later), so the buffer is cleared only on a thread's first image of each call, not per
// image (clearing whole buffers cost about as much as the sparse arithmetic at density 0.1).
std::atomic<uint64_t> g_calls{0};

uint64_t NewCall() { return g_calls.fetch_add(1, std::memory_order_relaxed) + 1; }

struct PaddedBuffer {
  std::vector<float> v;
  uint64_t call = 0;
  float* Prepare(uint64_t id, size_t size) {
    if (call != id || v.size() != size) {
      v.assign(size, 0.0f);
      call = id;
    }
    return v.data();
  }
};

// Where tap (kh, kw) of input channel cc starts in the phase-plane buffer: output pixel q (flat
// over (oh, wq)) reads the input at that offset + q.
int32_t ForwardOffset(const Geometry& g, int64_t kh, int64_t kw, int64_t cc) {
  int64_t plane = (kh % g.s) * g.s + kw % g.s;
  return static_cast<int32_t>(cc * g.x_cs + plane * g.ps + (kh / g.s) * g.wq + kw / g.s);
}

// Scatters an image (NHWC or NCHW) into `buf` (its padding zero; see PaddedBuffer): channel cc,
// padded pixel (row, col) lands in plane (row % s, col % s) at (row / s) * wq + col / s of
// channel block cc * x_cs. The pixels of a row with one column phase are contiguous there: they
// move 16 at a time.
size_t PhasePlanesSize(const Geometry& g) { return g.c * g.x_cs + 32; }

void ToPhasePlanes(const Geometry& g, const float* img, float* buf) {
  for (int64_t ih = 0; ih < g.h; ++ih) {
    int64_t row = ih + g.p;
    if (row % g.s >= g.r) continue;  // a phase no tap reads (1x1, stride 2)
    for (int64_t pw = 0; pw < std::min(g.s, g.r); ++pw) {
      int64_t iw0 = ((pw - g.p) % g.s + g.s) % g.s;  // the first column with (iw + p) % s == pw
      int64_t count = iw0 < g.w ? (g.w - iw0 + g.s - 1) / g.s : 0;
      float* dst = buf + ((row % g.s) * g.s + pw) * g.ps + (row / g.s) * g.wq +
                   (iw0 + g.p) / g.s;
      const float* src = img + ih * g.lx.row + iw0 * g.lx.pixel;
      const int64_t step = g.s * g.lx.pixel;
      for (int64_t t = 0; t < count; t += 16)
        Gather(g.lx, src + t * step, step, std::min<int64_t>(16, count - t), g.c, dst + t, g.x_cs);
    }
  }
}

// The nonzero weights feeding each output row: row o reads taps[start[o] .. start[o+1]).
struct Tap {
  int32_t off;
  float w;
};
struct SparseRows {
  std::vector<int64_t> start{0};
  std::vector<Tap> taps;
  void EndRow() { start.push_back(static_cast<int64_t>(taps.size())); }
};

// out[0 .. 16T) = sum over taps of w * in[off .. off + 16T), the tile held in registers.
template <int T>
void RowTile(const float* in, const Tap* tap, const Tap* end, float* out) {
  v16 acc[T];
#pragma GCC unroll 16
  for (int t = 0; t < T; ++t) acc[t] = v16{};
  for (; tap < end; ++tap) {
    v16 wv = splat(tap->w);
    const float* src = in + tap->off;
#pragma GCC unroll 16
    for (int t = 0; t < T; ++t) acc[t] += wv * load16(src + 16 * t);
  }
#pragma GCC unroll 16
  for (int t = 0; t < T; ++t) store16(out + 16 * t, acc[t]);
}

using RowTileFn = void (*)(const float*, const Tap*, const Tap*, float*);
template <int... I>
constexpr std::array<RowTileFn, sizeof...(I)> RowTiles(std::integer_sequence<int, I...>) {
  return {&RowTile<I + 1>...};
}
constexpr auto kRowTiles = RowTiles(std::make_integer_sequence<int, kTile>());

// out[o * len + q] = sum over row o's taps of w * in[off + q], for q < len (a multiple of 16):
// the pixels are cut into near-equal chunks of at most kTile vectors, each chunk swept over all
// output rows while its inputs stay in cache.
void SparseApply(const SparseRows& rows, const float* in, int64_t len, float* out) {
  int64_t vecs = len / 16, n_out = static_cast<int64_t>(rows.start.size()) - 1;
  int64_t chunks = (vecs + kTile - 1) / kTile;
  for (int64_t ch = 0; ch < chunks; ++ch) {
    int64_t v0 = ch * vecs / chunks, v1 = (ch + 1) * vecs / chunks;
    RowTileFn fn = kRowTiles[v1 - v0 - 1];
    for (int64_t o = 0; o < n_out; ++o)
      fn(in + 16 * v0, rows.taps.data() + rows.start[o], rows.taps.data() + rows.start[o + 1],
         out + o * len + 16 * v0);
  }
}

// ---- forward: y[n,oh,ow,k] = sum_{kh,kw,c} x[n, oh*s+kh-p, ow*s+kw-p, c] w[kh,kw,c,k] ----
SparseRows ForwardRows(const Geometry& g, const float* w) {
  SparseRows rows;
  for (int64_t kk = 0; kk < g.k; ++kk) {
    for (int64_t kh = 0; kh < g.r; ++kh)
      for (int64_t kw = 0; kw < g.r; ++kw)
        for (int64_t cc = 0; cc < g.c; ++cc) {
          float v = w[((kh * g.r + kw) * g.c + cc) * g.k + kk];
          if (v != 0.0f) rows.taps.push_back({ForwardOffset(g, kh, kw, cc), v});
        }
    rows.EndRow();
  }
  return rows;
}

void SparseForward(ffi::ThreadPool& pool, const Geometry& g, const float* x, const float* w,
                   float* y) {
  SparseRows rows = ForwardRows(g, w);
  const uint64_t call = NewCall();
  ParallelFor(pool, g.n, [&](int64_t n) {
    thread_local PaddedBuffer in;
    thread_local std::vector<float> out;
    float* planes = in.Prepare(call, PhasePlanesSize(g));
    ToPhasePlanes(g, x + n * g.h * g.w * g.c, planes);
    out.resize(g.k * g.y_len + 16);
    SparseApply(rows, planes, g.y_len, out.data());
    float* y_img = y + n * g.oh * g.ow * g.k;
    for (int64_t i = 0; i < g.oh; ++i)
      for (int64_t j = 0; j < g.ow; j += 16)
        Scatter(g.ly, out.data() + i * g.wq + j, g.y_len, std::min<int64_t>(16, g.ow - j), g.k,
                y_img + i * g.ly.row + j * g.ly.pixel, g.ly.pixel);
  });
}

// ---- input gradient: dx[n,ih,iw,c] = sum dy[n,oh,ow,k] w[kh,kw,c,k] over s*oh+kh = ih+p, ... ----
// Computed per phase plane (ph, pw) of the padded input: plane pixel (i, j) is padded pixel
// (s*i+ph, s*j+pw) and receives from the taps kh = ph + s*a, kw = pw + s*b the output gradient at
// (i-a, j-b). dy is held zero-padded by `pad` = (r-1)/s rows and columns on the top and left, with
// pitch wd, so every (a, b) is a constant shift again; rows i0.. of each plane are computed.
struct Transposed {
  int64_t pad, wd, rows;    // dy padding, row pitch, rows per plane
  int64_t i0[2], j0[2];     // first plane row / column that holds an input pixel, per phase
  int64_t dy_cs, x_len;     // floats per dy channel, per plane channel (a multiple of 16)
};

Transposed MakeTransposed(const Geometry& g) {
  Transposed t{};
  t.pad = (g.r - 1) / g.s;
  int64_t last_row = 0, last_col = 0;
  for (int64_t ph = 0; ph < g.s; ++ph) {
    t.i0[ph] = std::max<int64_t>(0, (g.p - ph + g.s - 1) / g.s);
    t.j0[ph] = t.i0[ph];
    last_row = std::max(last_row, (g.h - 1 + g.p - ph) / g.s);
    last_col = std::max(last_col, (g.w - 1 + g.p - ph) / g.s);
    t.rows = std::max(t.rows, (g.h - 1 + g.p - ph) / g.s - t.i0[ph] + 1);
  }
  // valid dy columns [pad, pad+ow); reads reach column last_col+pad and may wrap into the next
  // row's left padding only
  t.wd = std::max(g.ow + t.pad, last_col + 1);
  t.x_len = RoundUp16(t.rows * t.wd);
  t.dy_cs = RoundUp16((std::max(last_row, g.oh) + t.pad + 2) * t.wd + 16);
  return t;
}

// The taps of phase (ph, pw), one row per input channel, reading the padded dy.
SparseRows InputGradRows(const Geometry& g, const Transposed& t, const float* w, int64_t ph,
                         int64_t pw) {
  SparseRows rows;
  for (int64_t cc = 0; cc < g.c; ++cc) {
    for (int64_t kh = ph; kh < g.r; kh += g.s)
      for (int64_t kw = pw; kw < g.r; kw += g.s) {
        int64_t shift = (t.i0[ph] - (kh - ph) / g.s + t.pad) * t.wd +
                        (t.j0[pw] - (kw - pw) / g.s + t.pad);
        for (int64_t kk = 0; kk < g.k; ++kk) {
          float v = w[((kh * g.r + kw) * g.c + cc) * g.k + kk];
          if (v != 0.0f) rows.taps.push_back({static_cast<int32_t>(kk * t.dy_cs + shift), v});
        }
      }
    rows.EndRow();
  }
  return rows;
}

std::vector<SparseRows> InputGradPhases(const Geometry& g, const Transposed& t, const float* w) {
  std::vector<SparseRows> phases;
  for (int64_t ph = 0; ph < g.s; ++ph)
    for (int64_t pw = 0; pw < g.s; ++pw) phases.push_back(InputGradRows(g, t, w, ph, pw));
  return phases;
}

// One image's dy, channel-major and zero-padded (see Transposed), into `padded` (its padding
// zero: PaddedBuffer).
void PadDy(const Geometry& g, const Transposed& t, const float* dy_img, float* padded) {
  for (int64_t i = 0; i < g.oh; ++i)
    for (int64_t j = 0; j < g.ow; j += 16)
      Gather(g.ly, dy_img + i * g.ly.row + j * g.ly.pixel, g.ly.pixel,
             std::min<int64_t>(16, g.ow - j), g.k, padded + (i + t.pad) * t.wd + j + t.pad,
             t.dy_cs);
}

// One image's dx from its padded dy.
void InputGradImage(const Geometry& g, const Transposed& t, const std::vector<SparseRows>& phases,
                    const float* padded, float* dx_img) {
  thread_local std::vector<float> out;
  int64_t plane = g.c * t.x_len;
  out.resize(g.s * g.s * plane + 16);
  for (int64_t ph = 0; ph < g.s * g.s; ++ph)
    SparseApply(phases[ph], padded, t.x_len, out.data() + ph * plane);
  for (int64_t ih = 0; ih < g.h; ++ih) {
    int64_t row = ih + g.p, ph = row % g.s;
    for (int64_t pw = 0; pw < g.s; ++pw) {
      int64_t iw0 = ((pw - g.p) % g.s + g.s) % g.s;  // the first column of this phase
      int64_t count = iw0 < g.w ? (g.w - iw0 + g.s - 1) / g.s : 0;
      const float* src = out.data() + (ph * g.s + pw) * plane + (row / g.s - t.i0[ph]) * t.wd +
                         (iw0 + g.p) / g.s - t.j0[pw];
      float* dst = dx_img + ih * g.lx.row + iw0 * g.lx.pixel;
      const int64_t step = g.s * g.lx.pixel;
      for (int64_t j = 0; j < count; j += 16)
        Scatter(g.lx, src + j, t.x_len, std::min<int64_t>(16, count - j), g.c, dst + j * step,
                step);
    }
  }
}

void SparseInputGrad(ffi::ThreadPool& pool, const Geometry& g, const float* dy, const float* w,
                     float* dx) {
  Transposed t = MakeTransposed(g);
  std::vector<SparseRows> phases = InputGradPhases(g, t, w);
  const uint64_t call = NewCall();
  ParallelFor(pool, g.n, [&](int64_t n) {
    thread_local PaddedBuffer in;
    float* padded = in.Prepare(call, g.k * t.dy_cs + 32);
    PadDy(g, t, dy + n * g.oh * g.ow * g.k, padded);
    InputGradImage(g, t, phases, padded, dx + n * g.h * g.w * g.c);
  });
}

// ---- filter gradient at the mask's positions: dw[kh,kw,c,k] = sum_{n,oh,ow} x[..] dy[n,oh,ow,k] --
// Per output channel k, the positions where the mask is set are dot products of the shifted
// input plane with dy's plane (flat over (oh, wq), zero in the padding columns).
struct DotList {
  std::vector<int64_t> start{0};  // positions of output channel k: [start[k], start[k+1])
  std::vector<int32_t> off;       // input offset (ForwardOffset) of each position
  std::vector<int64_t> index;     // where each position's sum goes in dw
};

DotList FilterGradPositions(const Geometry& g, const float* mask) {
  DotList list;
  for (int64_t kk = 0; kk < g.k; ++kk) {
    for (int64_t kh = 0; kh < g.r; ++kh)
      for (int64_t kw = 0; kw < g.r; ++kw)
        for (int64_t cc = 0; cc < g.c; ++cc) {
          int64_t idx = ((kh * g.r + kw) * g.c + cc) * g.k + kk;
          if (mask[idx] == 0.0f) continue;
          list.off.push_back(ForwardOffset(g, kh, kw, cc));
          list.index.push_back(idx);
        }
    list.start.push_back(static_cast<int64_t>(list.off.size()));
  }
  return list;
}

float HorizontalSum(v16 v) {
  float s = 0.0f;
  for (int i = 0; i < 16; ++i) s += v[i];
  return s;
}

// sums[16i .. 16i+16) += the 16 lanes of dot(x + off[i], dy) over `vecs` vectors, i < G, the G
// products in registers. The lanes are summed once per call, not per image (16 scalar adds per
// position and image cost a quarter of the arithmetic on 32x32 images, most of it on 8x8).
template <int G>
void DotTile(const float* x, const int32_t* off, const float* dy, int64_t vecs, float* sums) {
  v16 acc[G];
#pragma GCC unroll 8
  for (int i = 0; i < G; ++i) acc[i] = v16{};
  for (int64_t v = 0; v < vecs; ++v) {
    v16 d = load16(dy + 16 * v);
#pragma GCC unroll 8
    for (int i = 0; i < G; ++i) acc[i] += load16(x + off[i] + 16 * v) * d;
  }
#pragma GCC unroll 8
  for (int i = 0; i < G; ++i) store16(sums + 16 * i, load16(sums + 16 * i) + acc[i]);
}

using DotTileFn = void (*)(const float*, const int32_t*, const float*, int64_t, float*);
template <int... I>
constexpr std::array<DotTileFn, sizeof...(I)> DotTiles(std::integer_sequence<int, I...>) {
  return {&DotTile<I + 1>...};
}
constexpr auto kDotTiles = DotTiles(std::make_integer_sequence<int, kDotTile>());

// Adds one image's products to the 16-lane sums of every mask position: x in phase planes, dy
// channel kk at dyt + kk * dy_cs, flat over (oh, wq) and zero in the padding columns.
void FilterGradDots(const Geometry& g, const DotList& list, const float* planes, const float* dyt,
                    int64_t dy_cs, float* sums) {
  for (int64_t kk = 0; kk < g.k; ++kk)
    for (int64_t a = list.start[kk]; a < list.start[kk + 1]; a += kDotTile) {
      int64_t m = std::min<int64_t>(kDotTile, list.start[kk + 1] - a);
      kDotTiles[m - 1](planes, list.off.data() + a, dyt + kk * dy_cs, g.y_len / 16, sums + 16 * a);
    }
}

const float* XPlanes(const Geometry& g, uint64_t call, const float* x_img) {
  thread_local PaddedBuffer in;
  float* planes = in.Prepare(call, PhasePlanesSize(g));
  ToPhasePlanes(g, x_img, planes);
  return planes;
}

void FilterGradImage(const Geometry& g, const DotList& list, uint64_t call, const float* x_img,
                     const float* dy_img, float* sums) {
  thread_local PaddedBuffer grad;
  const float* planes = XPlanes(g, call, x_img);
  const int64_t pitch = g.y_len + 16;  // room for TransposeIn's trailing zeros
  float* dyt = grad.Prepare(call, g.k * pitch);
  for (int64_t i = 0; i < g.oh; ++i)
    for (int64_t j = 0; j < g.ow; j += 16)
      Gather(g.ly, dy_img + i * g.ly.row + j * g.ly.pixel, g.ly.pixel,
             std::min<int64_t>(16, g.ow - j), g.k, dyt + i * g.wq + j, pitch);
  FilterGradDots(g, list, planes, dyt, pitch, sums);
}

constexpr int64_t kFilterGradBlocks = 16;  // fixed image blocks: the sum order ignores threads

int64_t FilterGradBlocks(const Geometry& g) {
  return std::max<int64_t>(1, std::min<int64_t>(kFilterGradBlocks, g.n));
}

// dw at the mask's positions: the blocks' 16-lane partial sums added in block order.
void ReducePartials(const Geometry& g, const DotList& list, const std::vector<float>& partial,
                    int64_t blocks, float* dw) {
  const int64_t npos = static_cast<int64_t>(list.off.size());
  std::fill(dw, dw + g.r * g.r * g.c * g.k, 0.0f);
  for (int64_t i = 0; i < npos; ++i) {
    v16 s{};
    for (int64_t blk = 0; blk < blocks; ++blk) s += load16(partial.data() + (blk * npos + i) * 16);
    dw[list.index[i]] = HorizontalSum(s);
  }
}

void SparseFilterGrad(ffi::ThreadPool& pool, const Geometry& g, const float* x, const float* dy,
                      const float* mask, float* dw) {
  DotList list = FilterGradPositions(g, mask);
  const int64_t npos = static_cast<int64_t>(list.off.size()), blocks = FilterGradBlocks(g);
  std::vector<float> partial(blocks * npos * 16, 0.0f);  // 16 lanes per position and block
  const uint64_t call = NewCall();
  ParallelFor(pool, blocks, [&](int64_t blk) {
    for (int64_t n = blk * g.n / blocks; n < (blk + 1) * g.n / blocks; ++n)
      FilterGradImage(g, list, call, x + n * g.h * g.w * g.c, dy + n * g.oh * g.ow * g.k,
                      partial.data() + blk * npos * 16);
  });
  ReducePartials(g, list, partial, blocks, dw);
}

// ---- both gradients in one pass over the images, dy transposed once ----
// The filter gradient reads dy in the input gradient's padded layout, shifted by `pad` rows and
// columns, where the row pitches agree (wd == wq: every CIFAR layer): columns past ow then read
// the right padding or the next row's left padding, rows past oh the bottom padding, all zero.
bool SharedDyLayout(const Geometry& g, const Transposed& t) { return t.wd == g.wq; }

void SparseBackward(ffi::ThreadPool& pool, const Geometry& g, const float* x, const float* dy,
                    const float* w, const float* mask, float* dx, float* dw) {
  Transposed t = MakeTransposed(g);
  std::vector<SparseRows> phases = InputGradPhases(g, t, w);
  DotList list = FilterGradPositions(g, mask);
  const int64_t npos = static_cast<int64_t>(list.off.size()), blocks = FilterGradBlocks(g);
  std::vector<float> partial(blocks * npos * 16, 0.0f);
  const uint64_t call = NewCall();
  ParallelFor(pool, blocks, [&](int64_t blk) {
    thread_local PaddedBuffer in;
    for (int64_t n = blk * g.n / blocks; n < (blk + 1) * g.n / blocks; ++n) {
      float* padded = in.Prepare(call, g.k * t.dy_cs + 32);
      PadDy(g, t, dy + n * g.oh * g.ow * g.k, padded);
      InputGradImage(g, t, phases, padded, dx + n * g.h * g.w * g.c);
      FilterGradDots(g, list, XPlanes(g, call, x + n * g.h * g.w * g.c),
                     padded + t.pad * t.wd + t.pad, t.dy_cs, partial.data() + blk * npos * 16);
    }
  });
  ReducePartials(g, list, partial, blocks, dw);
}

// ---- the dense kernels of conv3x3_cpu.cc, above the crossover ----
bool DenseApplies(const Geometry& g, int64_t out_channels) {
  bool whole_vectors = !g.lx.channel_major || ((g.h * g.w) % 16 == 0 && (g.oh * g.ow) % 16 == 0);
  return g.r == 3 && g.p == 1 && out_channels % 16 == 0 && whole_vectors;
}

::Shape DenseShape(const Geometry& g) {
  return ::Shape{g.n, g.h, g.w, g.c, g.k, g.oh, g.ow, g.s};
}

// The dense kernels read and write NHWC: a channel-major call converts its operands around them
// (what the sparse loops avoid; above the crossover the dense arithmetic outweighs it).
std::vector<float> ChannelsLastCopy(ffi::ThreadPool& pool, const float* src, int64_t n, int64_t c,
                                    int64_t hw) {
  std::vector<float> out(n * c * hw);
  ParallelFor(pool, n,
              [&](int64_t i) { ToChannelsLast(src + i * c * hw, c, hw, &out[i * c * hw]); });
  return out;
}

void ChannelsFirstInto(ffi::ThreadPool& pool, const std::vector<float>& src, int64_t n, int64_t c,
                       int64_t hw, float* dst) {
  ParallelFor(pool, n,
              [&](int64_t i) { ToChannelsFirst(&src[i * c * hw], c, hw, dst + i * c * hw); });
}

void DenseForward(ffi::ThreadPool& pool, const Geometry& g, const float* x, const float* w,
                  float* y) {
  if (!g.lx.channel_major) return ::Forward(pool, DenseShape(g), x, w, y);
  std::vector<float> xl = ChannelsLastCopy(pool, x, g.n, g.c, g.h * g.w);
  std::vector<float> yl(g.n * g.oh * g.ow * g.k);
  ::Forward(pool, DenseShape(g), xl.data(), w, yl.data());
  ChannelsFirstInto(pool, yl, g.n, g.k, g.oh * g.ow, y);
}


void DenseInputGrad(ffi::ThreadPool& pool, const Geometry& g, const float* dy, const float* w,
                    float* dx) {
  if (g.lx.channel_major) {
    std::vector<float> dyl = ChannelsLastCopy(pool, dy, g.n, g.k, g.oh * g.ow);
    std::vector<float> dxl(g.n * g.h * g.w * g.c);
    Geometry last = g;  // the same layer on the NHWC copies
    last.lx = ImageLayout(false, g.c, g.h, g.w);
    last.ly = ImageLayout(false, g.k, g.oh, g.ow);
    DenseInputGrad(pool, last, dyl.data(), w, dxl.data());
    return ChannelsFirstInto(pool, dxl, g.n, g.c, g.h * g.w, dx);
  }
  // stride 1: a forward convolution of dy with the flipped kernel, its channels swapped
  std::vector<float> flipped(9 * g.c * g.k);
  for (int64_t kh = 0; kh < 3; ++kh)
    for (int64_t kw = 0; kw < 3; ++kw)
      for (int64_t cc = 0; cc < g.c; ++cc)
        for (int64_t kk = 0; kk < g.k; ++kk)
          flipped[(((2 - kh) * 3 + 2 - kw) * g.k + kk) * g.c + cc] =
              w[((kh * 3 + kw) * g.c + cc) * g.k + kk];
  ::Forward(pool, ::Shape{g.n, g.oh, g.ow, g.k, g.c, g.h, g.w, 1}, dy, flipped.data(), dx);
}

float Density(const float* v, int64_t size) {
  int64_t nonzero = 0;
  for (int64_t i = 0; i < size; ++i) nonzero += v[i] != 0.0f;
  return size ? static_cast<float>(nonzero) / static_cast<float>(size) : 0.0f;
}

// path: 0 = by density (the crossovers above), 1 = dense (where it applies), 2 = sparse.
bool UseDense(int64_t path, bool applies, float density, float crossover) {
  if (!applies || path == 2) return false;
  return path == 1 || density > crossover;
}

// Reads the layer from the input activation x ([N,H,W,C], or [N,C,H,W] with layout 1), the
// kernel [R,R,C,K] and the output-side activation (likewise [N,OH,OW,K] or [N,K,OH,OW]), and
// refuses what the kernels do not cover.
ffi::Error ReadGeometry(ffi::Span<const int64_t> xd, ffi::Span<const int64_t> wd,
                        ffi::Span<const int64_t> yd, int64_t stride, int64_t padding,
                        int64_t layout, Geometry* g) {
  if (xd.size() != 4 || wd.size() != 4 || yd.size() != 4 || (layout != 0 && layout != 1))
    return ffi::Error::InvalidArgument(
        "sparse_conv: expected NHWC (layout 0) or NCHW (layout 1) activations, HWIO kernels");
  const bool cm = layout == 1;
  const int64_t xc = cm ? xd[1] : xd[3], xh = cm ? xd[2] : xd[1], xw = cm ? xd[3] : xd[2];
  const int64_t yk = cm ? yd[1] : yd[3], yh = cm ? yd[2] : yd[1], yw = cm ? yd[3] : yd[2];
  if (wd[0] != wd[1] || (wd[0] != 1 && wd[0] != 3) || wd[2] != xc || wd[3] != yk)
    return ffi::Error::InvalidArgument("sparse_conv: kernel must be [R,R,C,K] with R = 1 or 3");
  if (stride != 1 && stride != 2)
    return ffi::Error::InvalidArgument("sparse_conv: stride must be 1 or 2");
  if (padding < 0 || padding >= wd[0])
    return ffi::Error::InvalidArgument("sparse_conv: padding must be 0 .. kernel size - 1");
  *g = MakeGeometry(xd[0], xh, xw, xc, wd[3], wd[0], stride, padding, cm);
  if (g->oh != yh || g->ow != yw || g->n != yd[0])
    return ffi::Error::InvalidArgument("sparse_conv: output shape does not match the layer");
  if (g->c * g->x_cs > (int64_t{1} << 30))
    return ffi::Error::InvalidArgument("sparse_conv: image too large for 32-bit offsets");
  return ffi::Error::Success();
}

ffi::Error ForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                       ffi::ResultBuffer<ffi::F32> y, int64_t stride, int64_t padding,
                       int64_t path, int64_t layout) {
  Geometry g;
  if (auto err = ReadGeometry(x.dimensions(), w.dimensions(), y->dimensions(), stride, padding,
                              layout, &g);
      err.failure())
    return err;
  float density = Density(w.typed_data(), w.element_count());
  if (UseDense(path, DenseApplies(g, g.k), density, kForwardCrossover))
    DenseForward(pool, g, x.typed_data(), w.typed_data(), y->typed_data());
  else
    SparseForward(pool, g, x.typed_data(), w.typed_data(), y->typed_data());
  return ffi::Error::Success();
}

bool InputGradDense(const Geometry& g, int64_t path, const float* w) {
  bool applies = DenseApplies(g, g.c) && g.s == 1;
  return UseDense(path, applies, Density(w, g.r * g.r * g.c * g.k), kInputGradCrossover);
}

bool FilterGradDense(const Geometry& g, int64_t path, const float* mask) {
  return UseDense(path, DenseApplies(g, g.k), Density(mask, g.r * g.r * g.c * g.k),
                  kFilterGradCrossover);
}

void RunInputGrad(ffi::ThreadPool& pool, const Geometry& g, bool dense, const float* dy,
                  const float* w, float* dx) {
  if (dense)
    DenseInputGrad(pool, g, dy, w, dx);
  else
    SparseInputGrad(pool, g, dy, w, dx);
}

void RunFilterGrad(ffi::ThreadPool& pool, const Geometry& g, bool dense, const float* x,
                   const float* dy, const float* mask, float* dw) {
  if (!dense) return SparseFilterGrad(pool, g, x, dy, mask, dw);
  if (g.lx.channel_major) {
    std::vector<float> xl = ChannelsLastCopy(pool, x, g.n, g.c, g.h * g.w);
    std::vector<float> dyl = ChannelsLastCopy(pool, dy, g.n, g.k, g.oh * g.ow);
    ::FilterGrad(pool, DenseShape(g), xl.data(), dyl.data(), dw);
  } else {
    ::FilterGrad(pool, DenseShape(g), x, dy, dw);
  }
  for (int64_t i = 0; i < g.r * g.r * g.c * g.k; ++i) dw[i] = mask[i] != 0.0f ? dw[i] : 0.0f;
}

ffi::Error InputGradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> w,
                         ffi::ResultBuffer<ffi::F32> dx, int64_t stride, int64_t padding,
                         int64_t path, int64_t layout) {
  Geometry g;
  if (auto err =
          ReadGeometry(dx->dimensions(), w.dimensions(), dy.dimensions(), stride, padding,
                       layout, &g);
      err.failure())
    return err;
  RunInputGrad(pool, g, InputGradDense(g, path, w.typed_data()), dy.typed_data(), w.typed_data(),
               dx->typed_data());
  return ffi::Error::Success();
}

ffi::Error FilterGradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                          ffi::Buffer<ffi::F32> mask, ffi::ResultBuffer<ffi::F32> dw,
                          int64_t stride, int64_t padding, int64_t path, int64_t layout) {
  Geometry g;
  if (auto err = ReadGeometry(x.dimensions(), dw->dimensions(), dy.dimensions(), stride, padding,
                              layout, &g);
      err.failure())
    return err;
  if (mask.element_count() != dw->element_count())
    return ffi::Error::InvalidArgument("sparse_conv: the mask must have the kernel's shape");
  RunFilterGrad(pool, g, FilterGradDense(g, path, mask.typed_data()), x.typed_data(),
                dy.typed_data(), mask.typed_data(), dw->typed_data());
  return ffi::Error::Success();
}

// Both gradients: one pass over the images where both are sparse and share dy's layout, else the
// two calls above.
ffi::Error BackwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                        ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::F32> mask,
                        ffi::ResultBuffer<ffi::F32> dx, ffi::ResultBuffer<ffi::F32> dw,
                        int64_t stride, int64_t padding, int64_t path, int64_t layout) {
  Geometry g;
  if (auto err =
          ReadGeometry(x.dimensions(), w.dimensions(), dy.dimensions(), stride, padding,
                       layout, &g);
      err.failure())
    return err;
  if (mask.element_count() != w.element_count() || dw->element_count() != w.element_count() ||
      dx->element_count() != x.element_count())
    return ffi::Error::InvalidArgument("sparse_conv: mask, dw and dx must match kernel and x");
  bool input_dense = InputGradDense(g, path, w.typed_data());
  bool filter_dense = FilterGradDense(g, path, mask.typed_data());
  if (!input_dense && !filter_dense && SharedDyLayout(g, MakeTransposed(g))) {
    SparseBackward(pool, g, x.typed_data(), dy.typed_data(), w.typed_data(), mask.typed_data(),
                   dx->typed_data(), dw->typed_data());
  } else {
    RunInputGrad(pool, g, input_dense, dy.typed_data(), w.typed_data(), dx->typed_data());
    RunFilterGrad(pool, g, filter_dense, x.typed_data(), dy.typed_data(), mask.typed_data(),
                  dw->typed_data());
  }
  return ffi::Error::Success();
}

}  // namespace lottery_kd_sparse

XLA_FFI_DEFINE_HANDLER_SYMBOL(LotteryKdSparseConvForward, lottery_kd_sparse::ForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("stride")
                                  .Attr<int64_t>("padding")
                                  .Attr<int64_t>("path")
                                  .Attr<int64_t>("layout"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(LotteryKdSparseConvInputGrad, lottery_kd_sparse::InputGradImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("stride")
                                  .Attr<int64_t>("padding")
                                  .Attr<int64_t>("path")
                                  .Attr<int64_t>("layout"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(LotteryKdSparseConvFilterGrad, lottery_kd_sparse::FilterGradImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("stride")
                                  .Attr<int64_t>("padding")
                                  .Attr<int64_t>("path")
                                  .Attr<int64_t>("layout"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(LotteryKdSparseConvBackward, lottery_kd_sparse::BackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("stride")
                                  .Attr<int64_t>("padding")
                                  .Attr<int64_t>("path")
                                  .Attr<int64_t>("layout"));
