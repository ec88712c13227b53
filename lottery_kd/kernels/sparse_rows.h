// The sparse loops' shared machinery (used by sparse_passes.h, for sparse_conv_cpu.cc): a layer's
// geometry and buffer layouts, the channel-major "phase planes" an input image is moved into, the
// lists of nonzero weights, and SparseApply, the register-tiled sum every pass runs:
//   out[o][q] = sum over row o's nonzeros of  weight * in[offset + q]
// for 16 pixels q per vector. How and why the kernels vectorise over pixels: sparse_conv_cpu.cc.
#ifndef LOTTERY_KD_KERNELS_SPARSE_ROWS_H_
#define LOTTERY_KD_KERNELS_SPARSE_ROWS_H_

#include <array>
#include <atomic>
#include <utility>
#include <vector>

#include "sparse_layout.h"  // moving activations (NHWC or NCHW) to and from channel-major rows

namespace lottery_kd_sparse {

using namespace lottery_kd;  // NOLINT: the shared vector helpers

#ifdef __AVX512F__
constexpr int kTile = 12;     // output vectors in registers (32 zmm registers)
constexpr int kDotTile = 8;   // filter-gradient dot products in registers
#else
constexpr int kTile = 6;      // 12 ymm accumulators of the 16
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

// out[0 .. 16T) = sum over taps of w * in[off .. off + 16T), the tile held in registers (T
// vectors of 16 pixels, each kParts of the machine's own vectors: cpu_common.h says why).
template <int T>
void RowTile(const float* in, const Tap* tap, const Tap* end, float* out) {
  vn acc[T * kParts];
#pragma GCC unroll 16
  for (int t = 0; t < T * kParts; ++t) acc[t] = vn{};
  for (; tap < end; ++tap) {
    vn wv = splatn(tap->w);
    const float* src = in + tap->off;
#pragma GCC unroll 16
    for (int t = 0; t < T * kParts; ++t) acc[t] += wv * loadn(src + kLanes * t);
  }
#pragma GCC unroll 16
  for (int t = 0; t < T * kParts; ++t) storen(out + kLanes * t, acc[t]);
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

}  // namespace lottery_kd_sparse

#endif  // LOTTERY_KD_KERNELS_SPARSE_ROWS_H_
