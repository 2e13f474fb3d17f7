// y = x W^T for a few float32 rows x [M, K] and bfloat16 weights W [N, K], accumulated in float32.
//
// Each weight widens to float32 exactly (its 16 bits become the high half of a float32), so every
// product is the one float32 arithmetic forms from the same weights and only the order of float32
// sums differs. Decode reads each weight once per token, so streaming 2 bytes per weight instead
// of 4 is what makes it fast. (An int8 variant, tried, streamed slower than fbgemm's int8 linear.)
//
// x86-64 only (AVX-512 or AVX2+FMA, chosen at run time); the Python side falls back elsewhere.

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace {

constexpr int kRows = 4;              // weight rows per block: four independent streams
constexpr int kPrefetchBytes = 2048;  // how far ahead of each row's reads to prefetch

// How a weight widens to float32: 16 at a time (AVX-512), 8 at a time (AVX2), or one.
struct Bf16 {
  using T = uint16_t;
  static float one(T bits) {
    const uint32_t wide = uint32_t(bits) << 16;
    float value;
    std::memcpy(&value, &wide, sizeof value);
    return value;
  }
  __attribute__((target("avx512f,avx512bw"))) static __m512 sixteen(const T* p) {
    const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
  }
  __attribute__((target("avx2,fma"))) static __m256 eight(const T* p) {
    const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
  }
};

// Where a block's sums go: y [M, N], row-major.
struct Output {
  float* y;
  int64_t N;
  void put(int64_t m, int64_t n, float sum) const { y[m * N + n] = sum; }
};

// The tail of K that does not fill a vector, for rows [n0, n0 + kRows) and activations [m0, m0 + MC).
template <class W, int MC>
void finish(const float* x, const typename W::T* w, int64_t K, int64_t k, float partial[kRows][MC],
            const Output& out, int64_t n0, int64_t m0) {
  for (int r = 0; r < kRows; ++r)
    for (int m = 0; m < MC; ++m) {
      float sum = partial[r][m];
      for (int64_t t = k; t < K; ++t) sum += W::one(w[(n0 + r) * K + t]) * x[(m0 + m) * K + t];
      out.put(m0 + m, n0 + r, sum);
    }
}

template <class W, int MC>
__attribute__((target("avx512f,avx512bw")))
void block_avx512(const float* x, const typename W::T* w, int64_t K, const Output& out, int64_t n0, int64_t m0) {
  __m512 acc[kRows][MC];
  for (int r = 0; r < kRows; ++r)
    for (int m = 0; m < MC; ++m) acc[r][m] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    __m512 wide[kRows];
    for (int r = 0; r < kRows; ++r) {
      const typename W::T* p = w + (n0 + r) * K + k;
      if (((k * sizeof(typename W::T)) & 63) == 0)
        _mm_prefetch(reinterpret_cast<const char*>(p) + kPrefetchBytes, _MM_HINT_T1);
      wide[r] = W::sixteen(p);
    }
    for (int m = 0; m < MC; ++m) {
      const __m512 xv = _mm512_loadu_ps(x + (m0 + m) * K + k);
      for (int r = 0; r < kRows; ++r) acc[r][m] = _mm512_fmadd_ps(wide[r], xv, acc[r][m]);
    }
  }
  float partial[kRows][MC];
  for (int r = 0; r < kRows; ++r)
    for (int m = 0; m < MC; ++m) partial[r][m] = _mm512_reduce_add_ps(acc[r][m]);
  finish<W, MC>(x, w, K, k, partial, out, n0, m0);
}

__attribute__((target("avx2,fma")))
float sum_avx2(__m256 v) {
  const __m128 half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 quarter = _mm_add_ps(half, _mm_movehl_ps(half, half));
  return _mm_cvtss_f32(_mm_add_ss(quarter, _mm_shuffle_ps(quarter, quarter, 1)));
}

template <class W, int MC>
__attribute__((target("avx2,fma")))
void block_avx2(const float* x, const typename W::T* w, int64_t K, const Output& out, int64_t n0, int64_t m0) {
  __m256 acc[kRows][MC];
  for (int r = 0; r < kRows; ++r)
    for (int m = 0; m < MC; ++m) acc[r][m] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    __m256 wide[kRows];
    for (int r = 0; r < kRows; ++r) {
      const typename W::T* p = w + (n0 + r) * K + k;
      if (((k * sizeof(typename W::T)) & 63) == 0)
        _mm_prefetch(reinterpret_cast<const char*>(p) + kPrefetchBytes, _MM_HINT_T1);
      wide[r] = W::eight(p);
    }
    for (int m = 0; m < MC; ++m) {
      const __m256 xv = _mm256_loadu_ps(x + (m0 + m) * K + k);
      for (int r = 0; r < kRows; ++r) acc[r][m] = _mm256_fmadd_ps(wide[r], xv, acc[r][m]);
    }
  }
  float partial[kRows][MC];
  for (int r = 0; r < kRows; ++r)
    for (int m = 0; m < MC; ++m) partial[r][m] = sum_avx2(acc[r][m]);
  finish<W, MC>(x, w, K, k, partial, out, n0, m0);
}

template <class W, int MC>
void block(bool avx512, const float* x, const typename W::T* w, int64_t K, const Output& out, int64_t n0, int64_t m0) {
  if (avx512)
    block_avx512<W, MC>(x, w, K, out, n0, m0);
  else
    block_avx2<W, MC>(x, w, K, out, n0, m0);
}

// All activation rows against weight rows [n0, n0 + kRows), four activation rows at a time.
template <class W>
void rows(bool avx512, const float* x, int64_t M, const typename W::T* w, int64_t K, const Output& out, int64_t n0) {
  int64_t m0 = 0;
  for (; m0 + 4 <= M; m0 += 4) block<W, 4>(avx512, x, w, K, out, n0, m0);
  switch (M - m0) {
    case 3: block<W, 3>(avx512, x, w, K, out, n0, m0); break;
    case 2: block<W, 2>(avx512, x, w, K, out, n0, m0); break;
    case 1: block<W, 1>(avx512, x, w, K, out, n0, m0); break;
    default: break;
  }
}

template <class W>
torch::Tensor matvec(const torch::Tensor& x, const typename W::T* w, int64_t N) {
  const int64_t M = x.size(0), K = x.size(1);
  auto y = torch::empty({M, N}, x.options());
  const float* xp = x.data_ptr<float>();
  const Output out{y.data_ptr<float>(), N};
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
  const int64_t blocks = N / kRows;
  at::parallel_for(0, blocks, 16, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) rows<W>(avx512, xp, M, w, K, out, b * kRows);
  });
  for (int64_t n = blocks * kRows; n < N; ++n)  // the last N % kRows rows, in plain C++
    for (int64_t m = 0; m < M; ++m) {
      float sum = 0.0f;
      for (int64_t t = 0; t < K; ++t) sum += W::one(w[n * K + t]) * xp[m * K + t];
      out.put(m, n, sum);
    }
  return y;
}

void check(const torch::Tensor& x, const torch::Tensor& w, torch::ScalarType weight_type) {
  TORCH_CHECK(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"), "matvec needs AVX2 and FMA");
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1), "matvec: x [M, K] and w [N, K]");
  TORCH_CHECK(x.scalar_type() == torch::kFloat32 && w.scalar_type() == weight_type, "matvec: float32 x, bfloat16 w");
  TORCH_CHECK(x.is_contiguous() && w.is_contiguous() && x.is_cpu() && w.is_cpu(), "matvec: contiguous CPU tensors");
}

}  // namespace

bool supported() { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }

torch::Tensor bf16_matvec(const torch::Tensor& x, const torch::Tensor& w) {
  check(x, w, torch::kBFloat16);
  return matvec<Bf16>(x, reinterpret_cast<const uint16_t*>(w.data_ptr<at::BFloat16>()), w.size(0));
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("supported", &supported, "whether this CPU has the instructions the kernels need");
  m.def("bf16_matvec", &bf16_matvec, "y = x W^T, float32 x [M, K], bfloat16 W [N, K], float32 accumulation");
}
