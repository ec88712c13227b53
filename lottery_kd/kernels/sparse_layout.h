// How the masked convolutions (sparse_conv_cpu.cc) move activations between an image's layout
// and the channel-major, pixel-contiguous rows their loops read and write.
//
// Activations come in one of two layouts, per call:
//   * NHWC (channels last, as XLA and flax.linen.Conv keep them): moving 16 pixels of every
//     channel is a 16x16 transpose in registers (TransposeIn / TransposeOut);
//   * NCHW (channel-major): a channel's pixels are already contiguous, so a move is a row copy
//     (a strided one for the even or odd columns of a stride-2 layer). Measured idle at density
//     0.1074, this saves 14-16 % of a pass on 32x32x16 layers and nothing measurable on smaller
//     maps (benchmarks/results/sparse_conv_cpu_nchw_idle_2026-12-03.json): the transposes are
//     not what limits the sparse path (docs/benchmarks.md, "Skipping pruned weights").
// Gather and Scatter take either layout; ToChannelsLast and ToChannelsFirst convert whole images
// for the dense kernels of conv3x3_cpu.cc, which read NHWC only.
#ifndef LOTTERY_KD_KERNELS_SPARSE_LAYOUT_H_
#define LOTTERY_KD_KERNELS_SPARSE_LAYOUT_H_

#include <immintrin.h>

#include <utility>

#include "cpu_common.h"

namespace lottery_kd_sparse {

using namespace lottery_kd;  // NOLINT: the shared vector helpers

// ---- 16x16 transposes in registers: 4 rounds, round B swaps bit B of the row and column index
template <int B, int... I>
inline v16 MixLo(v16 a, v16 b, std::integer_sequence<int, I...>) {
  return __builtin_shufflevector(a, b, ((I >> B) & 1 ? 16 + (I ^ (1 << B)) : I)...);
}
template <int B, int... I>
inline v16 MixHi(v16 a, v16 b, std::integer_sequence<int, I...>) {
  return __builtin_shufflevector(a, b, ((I >> B) & 1 ? 16 + I : (I ^ (1 << B)))...);
}
template <int B>
__attribute__((always_inline)) inline void TransposeRound(v16 (&r)[16]) {
  constexpr auto idx = std::make_integer_sequence<int, 16>();
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i)
    if (!((i >> B) & 1)) {
      v16 a = r[i], b = r[i | (1 << B)];
      r[i] = MixLo<B>(a, b, idx);
      r[i | (1 << B)] = MixHi<B>(a, b, idx);
    }
}
#ifdef __AVX512F__
// The same with AVX-512's three-operand shuffles, 64 in all (unpack ps, unpack pd, two rounds of
// 128-bit lane shuffles): GCC compiled the generic rounds to ~300 shuffles and register copies,
// which made the transposes cost twice the sparse arithmetic at density 0.1.
__attribute__((always_inline)) inline void Transpose16(v16 (&r)[16]) {
  __m512 t[16], u[16];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {  // t[2i] lane L: r[2i][4L], r[2i+1][4L], r[2i][4L+1], ...
    t[2 * i] = _mm512_unpacklo_ps((__m512)r[2 * i], (__m512)r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps((__m512)r[2 * i], (__m512)r[2 * i + 1]);
  }
#pragma GCC unroll 4
  for (int g = 0; g < 4; ++g) {  // u[4g+j] lane L: rows 4g .. 4g+3 of column 4L+j
    __m512d lo01 = (__m512d)t[4 * g], hi01 = (__m512d)t[4 * g + 1];
    __m512d lo23 = (__m512d)t[4 * g + 2], hi23 = (__m512d)t[4 * g + 3];
    u[4 * g] = (__m512)_mm512_unpacklo_pd(lo01, lo23);
    u[4 * g + 1] = (__m512)_mm512_unpackhi_pd(lo01, lo23);
    u[4 * g + 2] = (__m512)_mm512_unpacklo_pd(hi01, hi23);
    u[4 * g + 3] = (__m512)_mm512_unpackhi_pd(hi01, hi23);
  }
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) {  // column 4L+j = lanes L of u[j], u[4+j], u[8+j], u[12+j]
    __m512 w0 = _mm512_shuffle_f32x4(u[j], u[4 + j], 0x88);
    __m512 w1 = _mm512_shuffle_f32x4(u[j], u[4 + j], 0xdd);
    __m512 w2 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0x88);
    __m512 w3 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0xdd);
    r[j] = (v16)_mm512_shuffle_f32x4(w0, w2, 0x88);
    r[8 + j] = (v16)_mm512_shuffle_f32x4(w0, w2, 0xdd);
    r[4 + j] = (v16)_mm512_shuffle_f32x4(w1, w3, 0x88);
    r[12 + j] = (v16)_mm512_shuffle_f32x4(w1, w3, 0xdd);
  }
}
#else
__attribute__((always_inline)) inline void Transpose16(v16 (&r)[16]) {
  TransposeRound<0>(r);
  TransposeRound<1>(r);
  TransposeRound<2>(r);
  TransposeRound<3>(r);
}
#endif

#if defined(__AVX2__) && !defined(__AVX512F__)
// AVX2: a 16x16 block is four 8x8 transposes straight from memory to memory. The generic rounds
// above work on v16 arrays, twice the machine's vector, which GCC keeps on the stack: on a Zen 1
// EPYC they made the NHWC moves cost 30-45 % of a sparse pass at density 0.1074. Each 8x8 loads
// rows i and i+4 into the two halves of one register (no cross-lane shuffles are needed then),
// and transposes the 4x4 blocks inside the halves with unpacks and shuffles.
// dst row j (j < out_rows, 8 floats at dst + j * dst_step) = column j of the 8x8 block whose row
// i is the 8 floats at src + i * src_step (zeros for rows i >= in_rows).
inline void Transpose8(const float* src, int64_t src_step, int64_t in_rows, float* dst,
                       int64_t dst_step, int64_t out_rows) {
  __m256 q[8];
  const __m128 zero = _mm_setzero_ps();
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i)
#pragma GCC unroll 2
    for (int half = 0; half < 2; ++half) {  // columns 4 * half .. 4 * half + 3
      __m128 lo = i < in_rows ? _mm_loadu_ps(src + i * src_step + 4 * half) : zero;
      __m128 hi = i + 4 < in_rows ? _mm_loadu_ps(src + (i + 4) * src_step + 4 * half) : zero;
      q[4 * half + i] = _mm256_set_m128(hi, lo);
    }
#pragma GCC unroll 2
  for (int half = 0; half < 2; ++half) {
    __m256* b = q + 4 * half;
    __m256 t0 = _mm256_unpacklo_ps(b[0], b[1]), t1 = _mm256_unpackhi_ps(b[0], b[1]);
    __m256 t2 = _mm256_unpacklo_ps(b[2], b[3]), t3 = _mm256_unpackhi_ps(b[2], b[3]);
    __m256 cols[4] = {_mm256_shuffle_ps(t0, t2, 0x44), _mm256_shuffle_ps(t0, t2, 0xee),
                      _mm256_shuffle_ps(t1, t3, 0x44), _mm256_shuffle_ps(t1, t3, 0xee)};
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j)
      if (4 * half + j < out_rows) _mm256_storeu_ps(dst + (4 * half + j) * dst_step, cols[j]);
  }
}

// src rows r < 16 (pixels or channels, 16 floats each, zeros for r >= in_rows) to dst rows
// j < 16 (16 floats each, only j < out_rows written): the 16x16 transpose as four 8x8 ones.
inline void Transpose16Memory(const float* src, int64_t src_step, int64_t in_rows, float* dst,
                              int64_t dst_step, int64_t out_rows) {
  for (int bi = 0; bi < 2; ++bi)  // source rows 8 * bi ..
    for (int bj = 0; bj < 2; ++bj)  // source columns 8 * bj .. = destination rows
      Transpose8(src + 8 * bi * src_step + 8 * bj, src_step, in_rows - 8 * bi,
                 dst + 8 * bj * dst_step + 8 * bi, dst_step, out_rows - 8 * bj);
}
#endif

// Channels [0, nc) of m <= 16 pixels (pixel t at src + t * src_step) to channel-major rows
// dst + cc * dst_cs + t. Full blocks of 16 channels store 16 values per row, zeros past m: the
// caller leaves room (zeros land in padding or in places written later).
inline void TransposeIn(const float* src, int64_t src_step, int64_t m, int64_t nc, float* dst,
                 int64_t dst_cs) {
  int64_t c0 = 0;
  for (; c0 + 16 <= nc; c0 += 16) {
#if defined(__AVX2__) && !defined(__AVX512F__)
    for (int t = 0; t < 16; ++t) __builtin_prefetch(src + (t + 16) * src_step + c0);
    Transpose16Memory(src + c0, src_step, m, dst + c0 * dst_cs, dst_cs, 16);
#else
    v16 r[16];
    for (int t = 0; t < 16; ++t) {
      __builtin_prefetch(src + (t + 16) * src_step + c0);  // the next block (a cache miss)
      r[t] = t < m ? load16(src + t * src_step + c0) : v16{};
    }
    Transpose16(r);
    for (int cc = 0; cc < 16; ++cc) store16(dst + (c0 + cc) * dst_cs, r[cc]);
#endif
  }
  for (; c0 < nc; ++c0)
    for (int64_t t = 0; t < m; ++t) dst[c0 * dst_cs + t] = src[t * src_step + c0];
}

// The inverse: channel rows src + cc * src_cs (16 readable values each) to m <= 16 pixels,
// pixel t's channels at dst + t * dst_step.
inline void TransposeOut(const float* src, int64_t src_cs, int64_t m, int64_t nc, float* dst,
                  int64_t dst_step) {
  int64_t c0 = 0;
  for (; c0 + 16 <= nc; c0 += 16) {
#if defined(__AVX2__) && !defined(__AVX512F__)
    Transpose16Memory(src + c0 * src_cs, src_cs, 16, dst + c0, dst_step, m);
#else
    v16 r[16];
    for (int cc = 0; cc < 16; ++cc) r[cc] = load16(src + (c0 + cc) * src_cs);
    Transpose16(r);
    for (int64_t t = 0; t < m; ++t) store16(dst + t * dst_step + c0, r[t]);
#endif
  }
  for (; c0 < nc; ++c0)
    for (int64_t t = 0; t < m; ++t) dst[t * dst_step + c0] = src[c0 * src_cs + t];
}


// ---- channel-major rows: m <= 16 values of one channel, `step` floats apart (1 or 2) ----------
// The first m lanes of p[0], p[step], ...; zeros in the other lanes. Reads nothing past the
// m-th value.
inline v16 LoadRow(const float* p, int64_t step, int64_t m) {
  if (step == 1) {
#ifdef __AVX512F__
    return (v16)_mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << m) - 1), p);
#else
    if (m == 16) return load16(p);
#endif
  } else if (step == 2 && m == 16) {
    v16 a = load16(p), b = LoadRow(p + 16, 1, 15);
    return __builtin_shufflevector(a, b, 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28,
                                   30);
  }
  v16 r{};
  for (int64_t t = 0; t < m; ++t) r[t] = p[t * step];
  return r;
}

// p[0], p[step], ... = the first m lanes of v; writes nothing else.
inline void StoreRow(float* p, int64_t step, int64_t m, v16 v) {
  if (step == 1) {
#ifdef __AVX512F__
    _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << m) - 1), (__m512)v);
    return;
#else
    if (m == 16) return store16(p, v);
#endif
  }
  for (int64_t t = 0; t < m; ++t) p[t * step] = v[t];
}

// An image's activation: value (channel cc, row i, column j) at i * row + j * pixel + cc * channel.
struct Layout {
  bool channel_major;
  int64_t pixel, channel, row;
};

inline Layout ImageLayout(bool channel_major, int64_t channels, int64_t rows, int64_t cols) {
  return channel_major ? Layout{true, 1, rows * cols, cols}
                       : Layout{false, channels, 1, cols * channels};
}

// m <= 16 pixels (pixel t at src + t * step) of channels [0, nc) (channel cc at + cc * l.channel)
// to channel-major rows dst + cc * dst_cs + t. As TransposeIn, rows may get 16 values, zeros past
// m: the caller leaves room.
inline void Gather(const Layout& l, const float* src, int64_t step, int64_t m, int64_t nc,
                   float* dst, int64_t dst_cs) {
  if (!l.channel_major) return TransposeIn(src, step, m, nc, dst, dst_cs);
  for (int64_t cc = 0; cc < nc; ++cc)
    store16(dst + cc * dst_cs, LoadRow(src + cc * l.channel, step, m));
}

// The inverse: channel rows src + cc * src_cs (16 readable values each) to m <= 16 pixels of the
// activation, pixel t at dst + t * step; writes those m pixels only.
inline void Scatter(const Layout& l, const float* src, int64_t src_cs, int64_t m, int64_t nc,
                    float* dst, int64_t step) {
  if (!l.channel_major) return TransposeOut(src, src_cs, m, nc, dst, step);
  for (int64_t cc = 0; cc < nc; ++cc)
    StoreRow(dst + cc * l.channel, step, m, load16(src + cc * src_cs));
}

// One image [c, hw] channel-major to [hw, c] channels last, and back; hw a multiple of 16.
inline void ToChannelsLast(const float* src, int64_t c, int64_t hw, float* dst) {
  for (int64_t t = 0; t < hw; t += 16) TransposeOut(src + t, hw, 16, c, dst + t * c, c);
}

inline void ToChannelsFirst(const float* src, int64_t c, int64_t hw, float* dst) {
  for (int64_t t = 0; t < hw; t += 16) TransposeIn(src + t * c, c, 16, c, dst + t, hw);
}

}  // namespace lottery_kd_sparse

#endif  // LOTTERY_KD_KERNELS_SPARSE_LAYOUT_H_
