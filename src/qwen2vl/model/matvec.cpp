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

// A bfloat16 weight widened to float32: one, 16 at a time (AVX-512), 8 at a time (AVX2).
float widen(uint16_t bits) {
  const uint32_t wide = uint32_t(bits) << 16;
  float value;
  std::memcpy(&value, &wide, sizeof value);
  return value;
}

__attribute__((target("avx512f,avx512bw"))) __m512 widen16(const uint16_t* p) {
  const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

__attribute__((target("avx2,fma"))) __m256 widen8(const uint16_t* p) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
}

// Every 64 bytes of a weight row, ask for the line kPrefetchBytes ahead.
inline void prefetch_ahead(const uint16_t* p, int64_t k) {
  if (((k * sizeof(uint16_t)) & 63) == 0) _mm_prefetch(reinterpret_cast<const char*>(p) + kPrefetchBytes, _MM_HINT_T1);
}

// The tail of K that does not fill a vector, for rows [n0, n0 + kRows) and activations [m0, m0 + MC);
// y [M, N] row-major.
template <int MC>
void finish(const float* x, const uint16_t* w, int64_t K, int64_t k, float partial[kRows][MC],
            float* y, int64_t N, int64_t n0, int64_t m0) {
  for (int r = 0; r < kRows; ++r)
    for (int m = 0; m < MC; ++m) {
      float sum = partial[r][m];
      for (int64_t t = k; t < K; ++t) sum += widen(w[(n0 + r) * K + t]) * x[(m0 + m) * K + t];
      y[(m0 + m) * N + n0 + r] = sum;
    }
}

// The AVX-512 and AVX2 blocks differ only in vector width and intrinsics; GCC's target attribute
// cannot be a template argument, so each is written out.
template <int MC>
__attribute__((target("avx512f,avx512bw")))
void block_avx512(const float* x, const uint16_t* w, int64_t K, float* y, int64_t N, int64_t n0, int64_t m0) {
  __m512 acc[kRows][MC];
  for (int r = 0; r < kRows; ++r)
    for (int m = 0; m < MC; ++m) acc[r][m] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    __m512 wide[kRows];
    for (int r = 0; r < kRows; ++r) {
      const uint16_t* p = w + (n0 + r) * K + k;
      prefetch_ahead(p, k);
      wide[r] = widen16(p);
    }
    for (int m = 0; m < MC; ++m) {
      const __m512 xv = _mm512_loadu_ps(x + (m0 + m) * K + k);
      for (int r = 0; r < kRows; ++r) acc[r][m] = _mm512_fmadd_ps(wide[r], xv, acc[r][m]);
    }
  }
  float partial[kRows][MC];
  for (int r = 0; r < kRows; ++r)
    for (int m = 0; m < MC; ++m) partial[r][m] = _mm512_reduce_add_ps(acc[r][m]);
  finish<MC>(x, w, K, k, partial, y, N, n0, m0);
}

__attribute__((target("avx2,fma")))
float sum_avx2(__m256 v) {
  const __m128 half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 quarter = _mm_add_ps(half, _mm_movehl_ps(half, half));
  return _mm_cvtss_f32(_mm_add_ss(quarter, _mm_shuffle_ps(quarter, quarter, 1)));
}

template <int MC>
__attribute__((target("avx2,fma")))
void block_avx2(const float* x, const uint16_t* w, int64_t K, float* y, int64_t N, int64_t n0, int64_t m0) {
  __m256 acc[kRows][MC];
  for (int r = 0; r < kRows; ++r)
    for (int m = 0; m < MC; ++m) acc[r][m] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    __m256 wide[kRows];
    for (int r = 0; r < kRows; ++r) {
      const uint16_t* p = w + (n0 + r) * K + k;
      prefetch_ahead(p, k);
      wide[r] = widen8(p);
    }
    for (int m = 0; m < MC; ++m) {
      const __m256 xv = _mm256_loadu_ps(x + (m0 + m) * K + k);
      for (int r = 0; r < kRows; ++r) acc[r][m] = _mm256_fmadd_ps(wide[r], xv, acc[r][m]);
    }
  }
  float partial[kRows][MC];
  for (int r = 0; r < kRows; ++r)
    for (int m = 0; m < MC; ++m) partial[r][m] = sum_avx2(acc[r][m]);
  finish<MC>(x, w, K, k, partial, y, N, n0, m0);
}

template <int MC>
void block(bool avx512, const float* x, const uint16_t* w, int64_t K, float* y, int64_t N, int64_t n0, int64_t m0) {
  if (avx512)
    block_avx512<MC>(x, w, K, y, N, n0, m0);
  else
    block_avx2<MC>(x, w, K, y, N, n0, m0);
}

// All activation rows against weight rows [n0, n0 + kRows), four activation rows at a time.
void rows(bool avx512, const float* x, int64_t M, const uint16_t* w, int64_t K, float* y, int64_t N, int64_t n0) {
  int64_t m0 = 0;
  for (; m0 + 4 <= M; m0 += 4) block<4>(avx512, x, w, K, y, N, n0, m0);
  switch (M - m0) {
    case 3: block<3>(avx512, x, w, K, y, N, n0, m0); break;
    case 2: block<2>(avx512, x, w, K, y, N, n0, m0); break;
    case 1: block<1>(avx512, x, w, K, y, N, n0, m0); break;
    default: break;
  }
}

bool has_avx2_fma() { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }

}  // namespace

bool supported() { return has_avx2_fma(); }

torch::Tensor bf16_matvec(const torch::Tensor& x, const torch::Tensor& w) {
  TORCH_CHECK(has_avx2_fma(), "bf16_matvec needs AVX2 and FMA");
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1), "bf16_matvec: x [M, K] and w [N, K]");
  TORCH_CHECK(x.scalar_type() == torch::kFloat32 && w.scalar_type() == torch::kBFloat16,
              "bf16_matvec: float32 x, bfloat16 w");
  TORCH_CHECK(x.is_contiguous() && w.is_contiguous() && x.is_cpu() && w.is_cpu(), "bf16_matvec: contiguous CPU tensors");
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  auto y = torch::empty({M, N}, x.options());
  const float* xp = x.data_ptr<float>();
  const uint16_t* wp = reinterpret_cast<const uint16_t*>(w.data_ptr<at::BFloat16>());
  float* yp = y.data_ptr<float>();
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
  const int64_t blocks = N / kRows;
  at::parallel_for(0, blocks, 16, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) rows(avx512, xp, M, wp, K, yp, N, b * kRows);
  });
  for (int64_t n = blocks * kRows; n < N; ++n)  // the last N % kRows rows, in plain C++
    for (int64_t m = 0; m < M; ++m) {
      float sum = 0.0f;
      for (int64_t t = 0; t < K; ++t) sum += widen(wp[n * K + t]) * xp[m * K + t];
      yp[m * N + n] = sum;
    }
  return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("supported", &supported, "whether this CPU has the instructions the kernel needs");
  m.def("bf16_matvec", &bf16_matvec, "y = x W^T, float32 x [M, K], bfloat16 W [N, K], float32 accumulation");
}
