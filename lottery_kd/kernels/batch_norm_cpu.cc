// Training-mode BatchNorm over the rows of an [M, C] view of NHWC activations (C a multiple of
// 16), with the residual add and the ReLU fused in, for XLA:CPU; called through the XLA FFI by
// lottery_kd/kernels/batch_norm.py.
//
// Why: XLA:CPU runs BatchNorm + ReLU of a CIFAR ResNet as ~8 passes over the activations per
// layer (it materialises dz and y - mean because YNNPACK's per-channel sums cannot fuse their
// producers), about 40% of a ResNet-20 train step. Here the forward is two passes (statistics;
// affine + residual + ReLU) and the backward two (two per-channel sums; the affine map to dy).
//
// Determinism: every sum is taken over fixed row blocks, and the blocks are added in order, so
// results do not depend on the number of threads.
#include <cmath>
#include <cstdint>
#include <vector>

#include "cpu_common.h"

namespace {

using namespace lottery_kd;  // NOLINT: the shared vector helpers

constexpr int64_t kRowBlocks = 32;

inline vn Relu(vn z) { return z > 0.0f ? z : vn{}; }  // a select: relu(NaN) = 0, as XLA's

struct Rows {
  int64_t m, c;
  int64_t begin(int64_t block) const { return block * m / kRowBlocks; }
  int64_t end(int64_t block) const { return (block + 1) * m / kRowBlocks; }
};

// Runs fn(first row, end row, partial sums) for every row block (in parallel), each filling
// NSUMS x C float partial sums; then adds the blocks' sums in block order, in double.
template <int NSUMS, class Fn>
void BlockSums(ffi::ThreadPool& pool, const Rows& rows, Fn fn, std::vector<double>* totals) {
  std::vector<float> partial(kRowBlocks * NSUMS * rows.c, 0.0f);
  ParallelFor(pool, kRowBlocks, [&](int64_t block) {
    fn(rows.begin(block), rows.end(block), partial.data() + block * NSUMS * rows.c);
  });
  totals->assign(NSUMS * rows.c, 0.0);
  for (int64_t block = 0; block < kRowBlocks; ++block)
    for (int64_t i = 0; i < NSUMS * rows.c; ++i)
      (*totals)[i] += partial[block * NSUMS * rows.c + i];
}

// ---- forward ----
void Forward(ffi::ThreadPool& pool, const Rows& rows, const float* y, const float* scale,
             const float* bias, const float* residual, float epsilon, bool relu, float* out,
             float* mean_out, float* var_out) {
  const int64_t c = rows.c;
  // Sums of y - shift (shift: the first row), so the variance E[d^2] - E[d]^2 does not cancel
  // catastrophically when |mean| >> std.
  std::vector<float> shift(y, y + c);
  std::vector<double> sums;
  BlockSums<2>(pool, rows, [&](int64_t r0, int64_t r1, float* acc) {
    for (int64_t c0 = 0; c0 < c; c0 += kLanes) {
      vn s = loadn(shift.data() + c0), sum{}, sq{};
      for (int64_t r = r0; r < r1; ++r) {
        vn d = loadn(y + r * c + c0) - s;
        sum += d;
        sq += d * d;
      }
      storen(acc + c0, sum);
      storen(acc + c + c0, sq);
    }
  }, &sums);
  std::vector<float> a(c), b(c);
  for (int64_t i = 0; i < c; ++i) {
    double mean_d = sums[i] / rows.m;
    double var = std::max(0.0, sums[c + i] / rows.m - mean_d * mean_d);
    float mean = static_cast<float>(shift[i] + mean_d);
    float rstd = 1.0f / std::sqrt(static_cast<float>(var) + epsilon);
    mean_out[i] = mean;
    var_out[i] = static_cast<float>(var);
    a[i] = scale[i] * rstd;
    b[i] = bias[i] - mean * a[i];
  }
  ParallelFor(pool, kRowBlocks, [&](int64_t block) {
    for (int64_t r = rows.begin(block); r < rows.end(block); ++r)
      for (int64_t c0 = 0; c0 < c; c0 += kLanes) {
        vn z = loadn(y + r * c + c0) * loadn(a.data() + c0) + loadn(b.data() + c0);
        if (residual) z += loadn(residual + r * c + c0);
        storen(out + r * c + c0, relu ? Relu(z) : z);
      }
  });
}

// ---- backward ----
// dz = g * (out > 0) (or g without the ReLU); with xhat = (y - mean) rstd and a = scale rstd:
// dy = a (dz - mean(dz) - xhat mean(dz xhat)) + g_mean / M + g_var 2 (y - mean) / M,
// dscale = sum(dz xhat), dbias = sum(dz), dresidual = dz.
void Backward(ffi::ThreadPool& pool, const Rows& rows, const float* g, const float* out,
              const float* y, const float* scale, const float* mean, const float* var,
              const float* g_mean, const float* g_var, float epsilon, float* dy, float* dscale,
              float* dbias, float* dresidual) {
  const int64_t c = rows.c;
  auto dz_at = [&](int64_t i) {
    vn gv = loadn(g + i);
    return out ? (loadn(out + i) > 0.0f ? gv : vn{}) : gv;
  };
  std::vector<double> sums;
  BlockSums<2>(pool, rows, [&](int64_t r0, int64_t r1, float* acc) {
    for (int64_t c0 = 0; c0 < c; c0 += kLanes) {
      vn m = loadn(mean + c0), sum{}, cross{};
      for (int64_t r = r0; r < r1; ++r) {
        vn dz = dz_at(r * c + c0);
        sum += dz;
        cross += dz * (loadn(y + r * c + c0) - m);
      }
      storen(acc + c0, sum);
      storen(acc + c + c0, cross);
    }
  }, &sums);
  std::vector<float> a(c), slope(c), offset(c);
  for (int64_t i = 0; i < c; ++i) {
    float rstd = 1.0f / std::sqrt(var[i] + epsilon);
    float sum_dz = static_cast<float>(sums[i]);
    float sum_dz_xhat = static_cast<float>(sums[c + i]) * rstd;
    dbias[i] = sum_dz;
    dscale[i] = sum_dz_xhat;
    a[i] = scale[i] * rstd;
    slope[i] = (2.0f * g_var[i] - a[i] * rstd * sum_dz_xhat) / rows.m;
    offset[i] = (g_mean[i] - a[i] * sum_dz) / rows.m;
  }
  ParallelFor(pool, kRowBlocks, [&](int64_t block) {
    for (int64_t r = rows.begin(block); r < rows.end(block); ++r)
      for (int64_t c0 = 0; c0 < c; c0 += kLanes) {
        int64_t i = r * c + c0;
        vn dz = dz_at(i);
        vn centred = loadn(y + i) - loadn(mean + c0);
        storen(dy + i, loadn(a.data() + c0) * dz + loadn(slope.data() + c0) * centred +
                            loadn(offset.data() + c0));
        if (dresidual) storen(dresidual + i, dz);
      }
  });
}

// [M, C] from an activation of any rank (channels last), refusing what the kernels do not cover.
ffi::Error ReadRows(ffi::Span<const int64_t> dims, Rows* rows) {
  if (dims.size() == 0)
    return ffi::Error::InvalidArgument("batch_norm: expected channels-last data");
  rows->c = dims.back();
  rows->m = 1;
  for (size_t i = 0; i + 1 < dims.size(); ++i) rows->m *= dims[i];
  if (rows->c % 16 != 0 || rows->m < 1)
    return ffi::Error::InvalidArgument("batch_norm: channels must be a multiple of 16");
  return ffi::Error::Success();
}

ffi::Error ForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> y, ffi::Buffer<ffi::F32> scale,
                       ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> residual,
                       ffi::ResultBuffer<ffi::F32> out, ffi::ResultBuffer<ffi::F32> mean,
                       ffi::ResultBuffer<ffi::F32> var, float epsilon, bool relu,
                       bool has_residual) {
  Rows rows;
  if (auto err = ReadRows(y.dimensions(), &rows); err.failure()) return err;
  Forward(pool, rows, y.typed_data(), scale.typed_data(), bias.typed_data(),
          has_residual ? residual.typed_data() : nullptr, epsilon, relu, out->typed_data(),
          mean->typed_data(), var->typed_data());
  return ffi::Error::Success();
}

ffi::Error BackwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> g, ffi::Buffer<ffi::F32> out,
                        ffi::Buffer<ffi::F32> y, ffi::Buffer<ffi::F32> scale,
                        ffi::Buffer<ffi::F32> mean, ffi::Buffer<ffi::F32> var,
                        ffi::Buffer<ffi::F32> g_mean, ffi::Buffer<ffi::F32> g_var,
                        ffi::ResultBuffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dscale,
                        ffi::ResultBuffer<ffi::F32> dbias, ffi::ResultBuffer<ffi::F32> dresidual,
                        float epsilon, bool relu, bool has_residual) {
  Rows rows;
  if (auto err = ReadRows(y.dimensions(), &rows); err.failure()) return err;
  Backward(pool, rows, g.typed_data(), relu ? out.typed_data() : nullptr, y.typed_data(),
           scale.typed_data(), mean.typed_data(), var.typed_data(), g_mean.typed_data(),
           g_var.typed_data(), epsilon, dy->typed_data(), dscale->typed_data(),
           dbias->typed_data(), has_residual ? dresidual->typed_data() : nullptr);
  return ffi::Error::Success();
}

}  // namespace

// (y, scale, bias, residual or a scalar stand-in) -> (out, batch mean, batch variance)
XLA_FFI_DEFINE_HANDLER_SYMBOL(LotteryKdBatchNormForward, ForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("epsilon")
                                  .Attr<bool>("relu")
                                  .Attr<bool>("has_residual"));

// (g, out or a stand-in, y, scale, mean, var, g_mean, g_var) -> (dy, dscale, dbias, dresidual or
// a stand-in)
XLA_FFI_DEFINE_HANDLER_SYMBOL(LotteryKdBatchNormBackward, BackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("epsilon")
                                  .Attr<bool>("relu")
                                  .Attr<bool>("has_residual"));
