// The three passes of a masked convolution on the sparse loops (sparse_rows.h), for
// sparse_conv_cpu.cc: the forward, the input gradient (per phase plane of the padded input), the
// filter gradient at the mask's positions only, and both gradients in one pass over the images.
// Each runs whatever the density; sparse_conv_cpu.cc chooses between them and the dense kernels.
#ifndef LOTTERY_KD_KERNELS_SPARSE_PASSES_H_
#define LOTTERY_KD_KERNELS_SPARSE_PASSES_H_

#include <algorithm>
#include <array>
#include <utility>
#include <vector>

#include "sparse_rows.h"  // Geometry, phase planes, nonzero lists, SparseApply

namespace lottery_kd_sparse {

using namespace lottery_kd;  // NOLINT: the shared vector helpers

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
  vn acc[G][kParts];  // kParts of the machine's own vectors per 16 lanes (cpu_common.h)
#pragma GCC unroll 8
  for (int i = 0; i < G; ++i)
    for (int p = 0; p < kParts; ++p) acc[i][p] = vn{};
  for (int64_t v = 0; v < vecs; ++v) {
#pragma GCC unroll 2
    for (int p = 0; p < kParts; ++p) {
      vn d = loadn(dy + 16 * v + kLanes * p);
#pragma GCC unroll 8
      for (int i = 0; i < G; ++i) acc[i][p] += loadn(x + off[i] + 16 * v + kLanes * p) * d;
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < G; ++i)
    for (int p = 0; p < kParts; ++p) {
      float* at = sums + 16 * i + kLanes * p;
      storen(at, loadn(at) + acc[i][p]);
    }
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

}  // namespace lottery_kd_sparse

#endif  // LOTTERY_KD_KERNELS_SPARSE_PASSES_H_
