// The sparse kernels' inner loop (kernels/sparse_rows.h, RowTile on AVX2: 6 vectors of 16
// pixels = 12 ymm accumulators), alone: per nonzero weight, one broadcast and 12 multiply-adds,
// each with an unaligned load from a shifted, L1-resident input. Built and run by
// benchmarks/tile_loop.py; prints GFLOP/s on one core for three sets of offsets.
#include <immintrin.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

// Twelve named accumulators: GCC keeps them in registers (an array of them, unrolled, it stored
// to the stack on every nonzero here); the loop is then instruction for instruction the one GCC
// makes of RowTile<6> (objdump -d of the kernel library: a broadcast, 12 vfmadd231ps with memory
// operands).
#define LKD_FMA(i) a##i = _mm256_fmadd_ps(w, _mm256_loadu_ps(s + 8 * i), a##i)
__attribute__((noinline)) void Tile(const float* in, const int* offs, const float* ws, int taps,
                                    float* out) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0,
         a8 = a0, a9 = a0, a10 = a0, a11 = a0;
  for (int t = 0; t < taps; ++t) {
    __m256 w = _mm256_broadcast_ss(ws + t);
    const float* s = in + offs[t];
    LKD_FMA(0); LKD_FMA(1); LKD_FMA(2); LKD_FMA(3); LKD_FMA(4); LKD_FMA(5);
    LKD_FMA(6); LKD_FMA(7); LKD_FMA(8); LKD_FMA(9); LKD_FMA(10); LKD_FMA(11);
  }
  __m256 acc[12] = {a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11};
  for (int i = 0; i < 12; ++i) _mm256_storeu_ps(out + 8 * i, acc[i]);
}

int main(int argc, char** argv) {
  const int reps = argc > 1 ? atoi(argv[1]) : 2000000, taps = 54;  // a 16->16 row at 0.375
  std::vector<float> buffer(16 * 1200 + 64, 1.0f);
  float* base = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(buffer.data()) + 63) & ~63ull);
  std::vector<float> ws(taps, 0.5f);
  const char* names[3] = {"kernel_offsets", "aligned", "misaligned_by_3"};
  printf("{");
  for (int mode = 0; mode < 3; ++mode) {
    std::vector<int> offs(taps);
    for (int t = 0; t < taps; ++t) {
      int cc = t % 16, kh = (t % 9) / 3, kw = t % 3;
      // the kernel's: channel planes, row pitch 34 (32 pixels and the padding), a column shift
      offs[t] = mode == 0 ? cc * 1200 + kh * 34 + kw : cc * 1200 + kh * 40 + (mode == 2 ? 3 : 0);
    }
    float out[96];
    auto t0 = std::chrono::steady_clock::now();
    for (int r = 0; r < reps; ++r) Tile(base, offs.data(), ws.data(), taps, out);
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (out[5] != 0.5f * taps) return 1;  // the sums are checked, so the loop is not elided
    printf("%s\"%s\": %.2f", mode ? ", " : "", names[mode], 2.0 * 96 * taps * reps / s / 1e9);
  }
  printf("}\n");
  return 0;
}
