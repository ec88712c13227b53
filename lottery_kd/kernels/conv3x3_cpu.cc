// Direct 3x3 convolutions (padding 1, stride 1 or 2, NHWC activations, HWIO kernels, float32)
// for XLA:CPU, called through the XLA FFI by lottery_kd/kernels/conv3x3.py.
//
// Why: XLA:CPU runs the small-channel (16-64) convolutions of CIFAR ResNets at ~25-100 GFLOP/s;
// its backward-filter transposes activations to channels-first and calls a slow kernel. These
// kernels keep an output tile in vector registers (GCC vector extensions, so they compile for
// AVX-512, AVX2 or anything else) and stream the inputs once.
//
// Determinism: every output element is summed in a fixed order that does not depend on the number
// of threads (the filter gradient sums fixed image blocks, then adds the blocks in order).
#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu_common.h"

namespace {

using namespace lottery_kd;  // NOLINT: the shared vector helpers

struct Shape {
  int64_t n, h, w, c, k, oh, ow, s;
};

// The output tile of the forward passes: TW pixels x KB vectors of 16 channels, in registers.
template <int TW, int KB>
__attribute__((always_inline)) inline void ZeroTile(vn (&acc)[TW][KB * kParts]) {
#pragma GCC unroll 16
  for (int t = 0; t < TW; ++t)
#pragma GCC unroll 8
    for (int b = 0; b < KB * kParts; ++b) acc[t][b] = vn{};
}

template <int TW, int KB>
__attribute__((always_inline)) inline void StoreTile(const vn (&acc)[TW][KB * kParts], const Shape& d,
                                                     float* y_img, int64_t oh, int64_t ow0,
                                                     int64_t k0) {
  float* y_row = y_img + oh * d.ow * d.k;
#pragma GCC unroll 16
  for (int t = 0; t < TW; ++t)
#pragma GCC unroll 8
    for (int b = 0; b < KB * kParts; ++b) storen(y_row + (ow0 + t) * d.k + k0 + kLanes * b, acc[t][b]);
}

// ---- forward: y[n,oh,ow,k] = sum_{kh,kw,c} x[n, oh*s+kh-1, ow*s+kw-1, c] w[kh,kw,c,k] ----
// One tile: TW consecutive output pixels of a row x 16*KB output channels, held in registers.
template <int TW, int KB>
void ForwardTile(const Shape& d, const float* x_img, const float* w, const float* zeros,
                 float* y_img, int64_t oh, int64_t ow0, int64_t k0) {
  vn acc[TW][KB * kParts];
  ZeroTile<TW, KB>(acc);
  for (int64_t kh = 0; kh < 3; ++kh) {
    int64_t ih = oh * d.s + kh - 1;
    if (ih < 0 || ih >= d.h) continue;
    const float* x_row = x_img + ih * d.w * d.c;
    for (int64_t kw = 0; kw < 3; ++kw) {
      const float* xp[TW];
#pragma GCC unroll 16
      for (int t = 0; t < TW; ++t) {
        int64_t iw = (ow0 + t) * d.s + kw - 1;
        xp[t] = (iw >= 0 && iw < d.w) ? x_row + iw * d.c : zeros;
      }
      const float* wp = w + (kh * 3 + kw) * d.c * d.k + k0;
      for (int64_t c = 0; c < d.c; ++c) {
        vn wv[KB * kParts];
#pragma GCC unroll 8
        for (int b = 0; b < KB * kParts; ++b) wv[b] = loadn(wp + c * d.k + kLanes * b);
#pragma GCC unroll 16
        for (int t = 0; t < TW; ++t) {
          vn xv = splatn(xp[t][c]);
#pragma GCC unroll 8
          for (int b = 0; b < KB * kParts; ++b) acc[t][b] += xv * wv[b];
        }
      }
    }
  }
  StoreTile<TW, KB>(acc, d, y_img, oh, ow0, k0);
}

template <int KB, int TW>
void ForwardTileAnyWidth(int64_t width, const Shape& d, const float* x_img, const float* w,
                         const float* zeros, float* y_img, int64_t oh, int64_t ow0, int64_t k0) {
  if constexpr (TW >= 1) {
    if (width == TW) return ForwardTile<TW, KB>(d, x_img, w, zeros, y_img, oh, ow0, k0);
    return ForwardTileAnyWidth<KB, TW - 1>(width, d, x_img, w, zeros, y_img, oh, ow0, k0);
  }
}

template <int KB, int TW>
void ForwardImage(const Shape& d, const float* x_img, const float* w, const float* zeros,
                  float* y_img) {
  for (int64_t oh = 0; oh < d.oh; ++oh)
    for (int64_t k0 = 0; k0 < d.k; k0 += 16 * KB) {
      int64_t ow0 = 0;
      for (; ow0 + TW <= d.ow; ow0 += TW) ForwardTile<TW, KB>(d, x_img, w, zeros, y_img, oh, ow0, k0);
      if (ow0 < d.ow)
        ForwardTileAnyWidth<KB, TW - 1>(d.ow - ow0, d, x_img, w, zeros, y_img, oh, ow0, k0);
    }
}

// The same tile for the CIFAR ResNet shapes, with the input channels C and the stride S known at
// compile time: every input of the tile is addressed from one base pointer with constant offsets
// (ForwardTile keeps TW pointers, which spill on x86-64; this tile is 1.1-1.6x faster), and
// the two padding taps are skipped at compile time (LEFT: the tile starts at column 0; RIGHT: its
// last pixel's right tap falls past the last column). Each accumulator is summed in ForwardTile's
// order (kh, kw, c) and a skipped tap only ever added an exact zero, so the results are
// bit-identical to ForwardTile's.
template <int TW, int KB, int C, int S, bool LEFT, bool RIGHT>
void ForwardTileFixed(const Shape& d, const float* x_img, const float* w, float* y_img,
                      int64_t oh, int64_t ow0, int64_t k0) {
  vn acc[TW][KB * kParts];
  ZeroTile<TW, KB>(acc);
  for (int64_t kh = 0; kh < 3; ++kh) {
    int64_t ih = oh * S + kh - 1;
    if (ih < 0 || ih >= d.h) continue;
    // the input pixel of output column ow0, tap kw = 1 (the tile's column offsets are constants)
    const float* x_tile = x_img + (ih * d.w + ow0 * S) * C;
#pragma GCC unroll 3
    for (int kw = 0; kw < 3; ++kw) {
      const float* wp = w + (kh * 3 + kw) * C * d.k + k0;
#pragma GCC unroll 2
      for (int c = 0; c < C; ++c) {
        vn wv[KB * kParts];
#pragma GCC unroll 8
        for (int b = 0; b < KB * kParts; ++b) wv[b] = loadn(wp + c * d.k + kLanes * b);
#pragma GCC unroll 16
        for (int t = 0; t < TW; ++t) {
          if ((LEFT && kw == 0 && t == 0) || (RIGHT && kw == 2 && t == TW - 1)) continue;
          vn xv = splatn(x_tile[(t * S + kw - 1) * C + c]);
#pragma GCC unroll 8
          for (int b = 0; b < KB * kParts; ++b) acc[t][b] += xv * wv[b];
        }
      }
    }
  }
  StoreTile<TW, KB>(acc, d, y_img, oh, ow0, k0);
}

template <int KB, int TW, int C, int S>
void ForwardImageFixed(const Shape& d, const float* x_img, const float* w, float* y_img) {
  for (int64_t oh = 0; oh < d.oh; ++oh)
    for (int64_t k0 = 0; k0 < d.k; k0 += 16 * KB)
      for (int64_t ow0 = 0; ow0 < d.ow; ow0 += TW) {
        bool left = ow0 == 0, right = (ow0 + TW - 1) * S + 1 >= d.w;
        if (left && right)
          ForwardTileFixed<TW, KB, C, S, true, true>(d, x_img, w, y_img, oh, ow0, k0);
        else if (left)
          ForwardTileFixed<TW, KB, C, S, true, false>(d, x_img, w, y_img, oh, ow0, k0);
        else if (right)
          ForwardTileFixed<TW, KB, C, S, false, true>(d, x_img, w, y_img, oh, ow0, k0);
        else
          ForwardTileFixed<TW, KB, C, S, false, false>(d, x_img, w, y_img, oh, ow0, k0);
      }
}

// The fixed-shape path covers the forward convolutions of the CIFAR ResNets (3 -> 16, 16 -> 16,
// 16 -> 32 stride 2, 32 -> 32, 32 -> 64 stride 2, 64 -> 64) and the stride-1 input gradients,
// which are forward convolutions too; false for any other shape (the general tiles then run).
// Tiles in vectors of 16 channels: 16 of them with AVX-512 (16 of the 32 zmm registers); with
// AVX2 each is two ymm of the 16, so there a tile holds 4 (8 ymm, beside the weights and the
// splat). Measured on a Zen 1 EPYC (benchmarks/results/conv3x3_avx2_zen1_2026-12-03.json).
// Runs the fixed tile where its width divides the output width (no ragged edge); else false.
template <int KB, int TW, int C, int S>
bool ForwardImageFixedWhole(const Shape& d, const float* x_img, const float* w, float* y_img) {
  if (d.ow % TW != 0) return false;
  ForwardImageFixed<KB, TW, C, S>(d, x_img, w, y_img);
  return true;
}

template <int C, int S>
bool ForwardImageFixedFor(const Shape& d, const float* x_img, const float* w, float* y_img) {
  if constexpr (kWideRegisters) {
    if (d.k == 16) return ForwardImageFixedWhole<1, 16, C, S>(d, x_img, w, y_img);
    if (d.k == 32) return ForwardImageFixedWhole<2, 8, C, S>(d, x_img, w, y_img);
    return ForwardImageFixedWhole<4, 4, C, S>(d, x_img, w, y_img);
  } else {
    if (d.k == 16) return ForwardImageFixedWhole<1, 4, C, S>(d, x_img, w, y_img);
    return ForwardImageFixedWhole<2, 2, C, S>(d, x_img, w, y_img);
  }
}

bool ForwardImageFixedShape(const Shape& d, const float* x_img, const float* w, float* y_img) {
  if (d.k == 16 && d.c == 3 && d.s == 1)  // the stem, on RGB images
    return ForwardImageFixedFor<3, 1>(d, x_img, w, y_img);
  if (d.k == 16 && d.c == 16 && d.s == 1) return ForwardImageFixedFor<16, 1>(d, x_img, w, y_img);
  if (d.k == 32 && d.c == 16 && d.s == 2) return ForwardImageFixedFor<16, 2>(d, x_img, w, y_img);
  if (d.k == 32 && d.c == 32 && d.s == 1) return ForwardImageFixedFor<32, 1>(d, x_img, w, y_img);
  if (d.k == 64 && d.c == 32 && d.s == 2) return ForwardImageFixedFor<32, 2>(d, x_img, w, y_img);
  if (d.k == 64 && d.c == 64 && d.s == 1) return ForwardImageFixedFor<64, 1>(d, x_img, w, y_img);
  return false;
}

void Forward(ffi::ThreadPool& pool, const Shape& d, const float* x, const float* w, float* y) {
  std::vector<float> zeros(d.c, 0.0f);
  ParallelFor(pool, d.n, [&](int64_t n) {
    const float* x_img = x + n * d.h * d.w * d.c;
    float* y_img = y + n * d.oh * d.ow * d.k;
    if (ForwardImageFixedShape(d, x_img, w, y_img)) return;
    if constexpr (!kWideRegisters) {
      if (d.k % 32 == 0) return ForwardImage<2, 2>(d, x_img, w, zeros.data(), y_img);
      return ForwardImage<1, 4>(d, x_img, w, zeros.data(), y_img);
    }
    if (d.k % 64 == 0) {
      ForwardImage<4, 4>(d, x_img, w, zeros.data(), y_img);
    } else if (d.k % 32 == 0) {
      ForwardImage<2, 8>(d, x_img, w, zeros.data(), y_img);
    } else {
      ForwardImage<1, 16>(d, x_img, w, zeros.data(), y_img);
    }
  });
}

// ---- filter gradient: dw[kh,kw,c,k] = sum_{n,oh,ow} x[n, oh*s+kh-1, ow*s+kw-1, c] dy[n,oh,ow,k] ----
// Accumulates CB input channels x 16*KB output channels in registers over rows [oh0, oh1).
template <int CB, int KB>
void FilterGradBlock(const Shape& d, const float* x_img, const float* dy_img, float* dw,
                     int64_t oh0, int64_t oh1, int64_t c0, int64_t k0) {
  for (int64_t kh = 0; kh < 3; ++kh)
    for (int64_t kw = 0; kw < 3; ++kw) {
      float* dwp = dw + ((kh * 3 + kw) * d.c + c0) * d.k + k0;
      vn acc[CB][KB * kParts];
#pragma GCC unroll 16
      for (int i = 0; i < CB; ++i)
#pragma GCC unroll 8
        for (int b = 0; b < KB * kParts; ++b) acc[i][b] = loadn(dwp + i * d.k + kLanes * b);
      // output columns whose input column ow*s+kw-1 lies inside the image (none where the
      // image is narrower than the tap: C++ division rounds -1/2 to 0, not down to -1)
      int64_t ow_lo = kw == 0 ? 1 : 0;
      int64_t ow_hi = d.w < kw ? 0 : std::min<int64_t>(d.ow, (d.w - kw) / d.s + 1);
      for (int64_t oh = oh0; oh < oh1; ++oh) {
        int64_t ih = oh * d.s + kh - 1;
        if (ih < 0 || ih >= d.h) continue;
        const float* dy_row = dy_img + oh * d.ow * d.k + k0;
        const float* x_row = x_img + ih * d.w * d.c + (kw - 1) * d.c + c0;
        for (int64_t ow = ow_lo; ow < ow_hi; ++ow) {
          const float* dyp = dy_row + ow * d.k;
          const float* xp = x_row + ow * d.s * d.c;
          vn g[KB * kParts];
#pragma GCC unroll 8
          for (int b = 0; b < KB * kParts; ++b) g[b] = loadn(dyp + kLanes * b);
#pragma GCC unroll 16
          for (int i = 0; i < CB; ++i) {
            vn xv = splatn(xp[i]);
#pragma GCC unroll 8
            for (int b = 0; b < KB * kParts; ++b) acc[i][b] += xv * g[b];
          }
        }
      }
#pragma GCC unroll 16
      for (int i = 0; i < CB; ++i)
#pragma GCC unroll 8
        for (int b = 0; b < KB * kParts; ++b) storen(dwp + i * d.k + kLanes * b, acc[i][b]);
    }
}

template <int KB, int CB>
void FilterGradBlockAnyC(int64_t cb, const Shape& d, const float* x_img, const float* dy_img,
                         float* dw, int64_t oh0, int64_t oh1, int64_t c0, int64_t k0) {
  if constexpr (CB >= 1) {
    if (cb == CB) return FilterGradBlock<CB, KB>(d, x_img, dy_img, dw, oh0, oh1, c0, k0);
    return FilterGradBlockAnyC<KB, CB - 1>(cb, d, x_img, dy_img, dw, oh0, oh1, c0, k0);
  }
}

template <int KB, int CB>
void FilterGradImage(const Shape& d, const float* x_img, const float* dy_img, float* dw) {
  // rows per chunk: about 64 output pixels, so a chunk's rows stay in L1/L2 across the 9 taps
  int64_t rows = std::max<int64_t>(1, std::min<int64_t>(d.oh, 64 / std::max<int64_t>(1, d.ow)));
  for (int64_t oh0 = 0; oh0 < d.oh; oh0 += rows) {
    int64_t oh1 = std::min(d.oh, oh0 + rows);
    for (int64_t c0 = 0; c0 < d.c; c0 += CB)
      for (int64_t k0 = 0; k0 < d.k; k0 += 16 * KB) {
        int64_t cb = std::min<int64_t>(CB, d.c - c0);
        if (cb == CB)
          FilterGradBlock<CB, KB>(d, x_img, dy_img, dw, oh0, oh1, c0, k0);
        else
          FilterGradBlockAnyC<KB, CB - 1>(cb, d, x_img, dy_img, dw, oh0, oh1, c0, k0);
      }
  }
}

constexpr int64_t kFilterGradBlocks = 16;  // fixed image blocks: the sum order ignores thread count

void FilterGrad(ffi::ThreadPool& pool, const Shape& d, const float* x, const float* dy,
                float* dw) {
  const int64_t size = 9 * d.c * d.k;
  const int64_t blocks = std::min<int64_t>(kFilterGradBlocks, d.n);
  std::vector<float> partial(blocks * size, 0.0f);
  ParallelFor(pool, blocks, [&](int64_t blk) {
    float* acc = partial.data() + blk * size;
    for (int64_t n = blk * d.n / blocks; n < (blk + 1) * d.n / blocks; ++n) {
      const float* x_img = x + n * d.h * d.w * d.c;
      const float* dy_img = dy + n * d.oh * d.ow * d.k;
      if (!kWideRegisters) {  // 4 input channels x 16 output channels: 8 ymm (see Forward;
        // measured faster there than 6 x 16 or 2 x 32, which leave ragged blocks or spill)
        FilterGradImage<1, 4>(d, x_img, dy_img, acc);
      } else if (d.k % 64 == 0) {
        FilterGradImage<4, 4>(d, x_img, dy_img, acc);
      } else if (d.k % 32 == 0) {
        FilterGradImage<2, 8>(d, x_img, dy_img, acc);
      } else {
        FilterGradImage<1, 16>(d, x_img, dy_img, acc);
      }
    }
  });
  std::fill(dw, dw + size, 0.0f);
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const float* p = partial.data() + blk * size;
    for (int64_t i = 0; i < size; ++i) dw[i] += p[i];
  }
}

// Reads the layer shape from x [N,H,W,C] and the output-side activation [N,OH,OW,K] (y for the
// forward pass, dy for the filter gradient), and refuses what the kernels do not cover.
ffi::Error ReadShape(ffi::Span<const int64_t> xd, ffi::Span<const int64_t> yd, size_t other_rank,
                     int64_t stride, Shape* d) {
  if (xd.size() != 4 || yd.size() != 4 || other_rank != 4)
    return ffi::Error::InvalidArgument("conv3x3: expected NHWC activations and HWIO kernels");
  *d = Shape{xd[0], xd[1], xd[2], xd[3], yd[3], yd[1], yd[2], stride};
  if (d->k % 16 != 0)
    return ffi::Error::InvalidArgument("conv3x3: output channels must be a multiple of 16");
  if (d->s != 1 && d->s != 2) return ffi::Error::InvalidArgument("conv3x3: stride must be 1 or 2");
  return ffi::Error::Success();
}

ffi::Error ForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                       ffi::ResultBuffer<ffi::F32> y, int64_t stride) {
  Shape d;
  if (auto err = ReadShape(x.dimensions(), y->dimensions(), w.dimensions().size(), stride, &d);
      err.failure())
    return err;
  Forward(pool, d, x.typed_data(), w.typed_data(), y->typed_data());
  return ffi::Error::Success();
}

ffi::Error FilterGradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                          ffi::ResultBuffer<ffi::F32> dw, int64_t stride) {
  Shape d;
  if (auto err = ReadShape(x.dimensions(), dy.dimensions(), dw->dimensions().size(), stride, &d);
      err.failure())
    return err;
  FilterGrad(pool, d, x.typed_data(), dy.typed_data(), dw->typed_data());
  return ffi::Error::Success();
}

// Both entry points: (x, second operand) -> one result, with the stride as an attribute.
auto BindTwoOperands() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::ThreadPool>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Ret<ffi::Buffer<ffi::F32>>()
      .Attr<int64_t>("stride");
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(LotteryKdConv3x3Forward, ForwardImpl, BindTwoOperands());
XLA_FFI_DEFINE_HANDLER_SYMBOL(LotteryKdConv3x3FilterGrad, FilterGradImpl, BindTwoOperands());
