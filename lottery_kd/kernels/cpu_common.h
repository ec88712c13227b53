// What the CPU kernels share: 16-float vectors (GCC vector extensions, so they compile for
// AVX-512, AVX2 or anything else) and a parallel loop on XLA's own intra-op thread pool.
#ifndef LOTTERY_KD_KERNELS_CPU_COMMON_H_
#define LOTTERY_KD_KERNELS_CPU_COMMON_H_

#include <sched.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <cstdint>
#include <cstdlib>
#include <thread>
#include <utility>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace lottery_kd {

typedef float v16 __attribute__((vector_size(64)));

// The machine's own vector, what register tiles are made of: 16 floats (one zmm register) with
// AVX-512, 8 (one ymm) otherwise. GCC keeps a vector wider than the machine's (a v16 on AVX2) in
// memory, so tiles of v16 ran every multiply-add through the stack on a Zen 1 EPYC (8-12
// GFLOP/s, a third of XLA's convolution); tiles of vn stay in registers. A tile counts its
// vectors of 16 channels in v16 units; each is kParts vn.
#if defined(__AVX512F__)
constexpr bool kWideRegisters = true;
constexpr int kLanes = 16;
#else
constexpr bool kWideRegisters = false;
constexpr int kLanes = 8;
#endif
constexpr int kParts = 16 / kLanes;
typedef float vn __attribute__((vector_size(4 * kLanes)));
typedef float vnu __attribute__((vector_size(4 * kLanes), aligned(4)));
inline vn loadn(const float* p) { return *reinterpret_cast<const vnu*>(p); }
inline void storen(float* p, vn v) { *reinterpret_cast<vnu*>(p) = v; }
template <int... I>
inline vn SplatLanes(float s, std::integer_sequence<int, I...>) { return vn{((void)I, s)...}; }
inline vn splatn(float s) { return SplatLanes(s, std::make_integer_sequence<int, kLanes>()); }

typedef float v16u __attribute__((vector_size(64), aligned(4)));

inline v16 load16(const float* p) { return *reinterpret_cast<const v16u*>(p); }
inline void store16(float* p, v16 v) { *reinterpret_cast<v16u*>(p) = v; }
// A broadcast without arithmetic: `v16{} + s` costs a scalar add before every broadcast (0 + s is
// not an identity for s = -0, so the compiler keeps it), a third of the inner loop's uops.
inline v16 splat(float s) { return v16{s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s}; }

inline int NumCores() {
  if (const char* env = std::getenv("LOTTERY_KD_CONV_THREADS")) {
    int n = std::atoi(env);
    if (n > 0) return n;
  }
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}

// Runs fn(i) for i in [0, n) on the calling thread plus tasks on XLA's intra-op thread pool (so
// no extra threads compete with XLA's own for the cores). Items are handed out one at a time;
// which thread runs an item never changes its result. Tasks that start after the last item has
// been taken touch only the shared counters, which they keep alive themselves.
template <class Fn>
void ParallelFor(ffi::ThreadPool& pool, int64_t n, Fn fn) {
  struct Queue {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
  };
  auto queue = std::make_shared<Queue>();
  int64_t helpers = std::min<int64_t>({NumCores() - 1, pool.num_threads(), n - 1});
  auto work = [queue, n, &fn]() {
    for (int64_t i; (i = queue->next.fetch_add(1)) < n;) {
      fn(i);
      queue->done.fetch_add(1, std::memory_order_release);
    }
  };
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule(decltype(work)(work));
  work();
  while (queue->done.load(std::memory_order_acquire) < n) std::this_thread::yield();
}

}  // namespace lottery_kd

#endif  // LOTTERY_KD_KERNELS_CPU_COMMON_H_
