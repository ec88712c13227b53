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
//
// Where the parts live: sparse_layout.h moves activations, sparse_rows.h holds the geometry and
// the register-tiled sparse sum, sparse_passes.h the three passes; this file chooses the sparse or
// the dense path per call and binds the handlers to the XLA FFI.
#include <cstring>

#include "conv3x3_cpu.cc"  // the dense kernels (Forward, FilterGrad): the path above the crossover
#include "sparse_passes.h"  // the sparse forward, input gradient and filter gradient

namespace lottery_kd_sparse {

using namespace lottery_kd;  // NOLINT: the shared vector helpers

// Densities (nonzero weights / all weights) above which the dense kernels run instead, where they
// apply (3x3, padding 1, a multiple of 16 output channels; stride 1 only for the input gradient),
// per instruction set: the two paths' speeds scale differently with the vector width.
#if defined(__AVX512F__)
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
constexpr float kSixteenChannelCrossover = 0.0f;  // not measured per channel count here
#else
// AVX2 (a Zen 1 EPYC, 2 cores, idle: `python -m benchmarks.sparse_conv --densities
// 0.6,0.5,0.4,0.3,0.2 --steps 3 --repeats 3`, benchmarks/results/
// sparse_conv_cpu_avx2_zen1_crossover_2026-12-03.json). Sparse / dense, range over the shapes:
//                  0.6        0.5        0.4        0.3        0.2
//   forward        0.63-0.86  0.75-1.03  0.93-1.22  1.14-1.51  1.58-2.00
//   input grad s1  0.72-0.82  0.85-1.01  1.02-1.25  1.31-1.55  1.84-1.90
//   filter grad    0.40-0.91  0.46-1.27  0.59-1.32  0.94-1.78  1.14-2.33
// (the stride-2 input gradient, against XLA: 1.21-2.53 at 0.6, so always sparse). The forward
// and input gradient cross near 0.4, the filter gradient near 0.3 (the 8x8x64 layer's lowest).
// Where the dense kernel's vector dimension holds only 16 channels (one vector: its least
// efficient case, the 32x32x16 layers) the sparse loops win up to 0.5 in every pass (forward
// 1.03, input gradient 1.01, filter gradient 1.27 at 0.5; 0.86, 0.79, 0.91 at 0.6).
constexpr float kForwardCrossover = 0.4f;
constexpr float kInputGradCrossover = 0.4f;
constexpr float kFilterGradCrossover = 0.3f;
constexpr float kSixteenChannelCrossover = 0.5f;
#endif

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
// `channels`: those the dense kernel vectorises over (its output's).
bool UseDense(int64_t path, bool applies, float density, float crossover, int64_t channels) {
  if (!applies || path == 2) return false;
  if (channels == 16) crossover = std::max(crossover, kSixteenChannelCrossover);
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
  if (UseDense(path, DenseApplies(g, g.k), density, kForwardCrossover, g.k))
    DenseForward(pool, g, x.typed_data(), w.typed_data(), y->typed_data());
  else
    SparseForward(pool, g, x.typed_data(), w.typed_data(), y->typed_data());
  return ffi::Error::Success();
}

bool InputGradDense(const Geometry& g, int64_t path, const float* w) {
  bool applies = DenseApplies(g, g.c) && g.s == 1;
  return UseDense(path, applies, Density(w, g.r * g.r * g.c * g.k), kInputGradCrossover, g.c);
}

bool FilterGradDense(const Geometry& g, int64_t path, const float* mask) {
  return UseDense(path, DenseApplies(g, g.k), Density(mask, g.r * g.r * g.c * g.k),
                  kFilterGradCrossover, g.k);
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
