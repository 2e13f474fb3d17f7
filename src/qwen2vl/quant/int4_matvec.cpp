// y = x W^T for a few float32 rows x [M, K] and 4-bit weights W [N, K] (groups of 32 along K, one
// float32 scale per group), the way llama.cpp's Q4_0 runs on a CPU: each 32 activations of a row
// are rounded to int8 with their own scale, and the products are formed in integers
// (vpmaddubsw, 32 at a time) and scaled once per group. Decode streams each weight once per token,
// so 4.5 bits per weight instead of 16 (bf16) or 8 (int8) is what makes it fast.
//
// Weight layout: packed [N, K / 2] bytes; the 16 bytes of group g of a row hold weight 32g + j in
// the low nibble of byte j and weight 32g + 16 + j in its high nibble, each stored as q + 8 with
// q in [-8, 7]. x86-64 with AVX2 + FMA; the Python side falls back elsewhere.

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <vector>

namespace {

constexpr int64_t kGroup = 32;

// Activations of one row rounded to int8 per group of 32: values, their scale, and
// 8 * scale * sum(values) (what the +8 offset of the stored weights adds to each group's product).
struct QuantizedRows {
  std::vector<int8_t> values;  // [M, K]
  std::vector<float> scale;    // [M, K / 32]
  std::vector<float> offset;   // [M, K / 32]
};

QuantizedRows quantize_rows(const float* x, int64_t M, int64_t K) {
  const int64_t groups = K / kGroup;
  QuantizedRows q{std::vector<int8_t>(M * K), std::vector<float>(M * groups), std::vector<float>(M * groups)};
  for (int64_t m = 0; m < M; ++m)
    for (int64_t g = 0; g < groups; ++g) {
      const float* v = x + m * K + g * kGroup;
      float amax = 0.0f;
      for (int64_t t = 0; t < kGroup; ++t) amax = std::max(amax, std::fabs(v[t]));
      const float scale = amax / 127.0f, inverse = amax > 0.0f ? 127.0f / amax : 0.0f;
      int32_t sum = 0;
      for (int64_t t = 0; t < kGroup; ++t) {
        const int32_t r = static_cast<int32_t>(std::nearbyint(v[t] * inverse));
        q.values[m * K + g * kGroup + t] = static_cast<int8_t>(r);
        sum += r;
      }
      q.scale[m * groups + g] = scale;
      q.offset[m * groups + g] = 8.0f * scale * static_cast<float>(sum);
    }
  return q;
}

__attribute__((target("avx2,fma")))
float sum_avx2(__m256 v) {
  const __m128 half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 quarter = _mm_add_ps(half, _mm_movehl_ps(half, half));
  return _mm_cvtss_f32(_mm_add_ss(quarter, _mm_shuffle_ps(quarter, quarter, 1)));
}

// The 32 stored weights (0..15) of one group, in order, one per byte.
__attribute__((target("avx2,fma"))) inline __m256i unpack(const uint8_t* p) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  const __m128i nibble = _mm_set1_epi8(0x0F);
  const __m128i low = _mm_and_si128(raw, nibble), high = _mm_and_si128(_mm_srli_epi16(raw, 4), nibble);
  return _mm256_set_m128i(high, low);
}

// Weight rows [n0, n0 + R) against activation rows [m0, m0 + MC).
template <int R, int MC>
__attribute__((target("avx2,fma")))
void block(const QuantizedRows& xq, const uint8_t* w, const float* ws, int64_t K, float* y, int64_t N,
           int64_t n0, int64_t m0) {
  const int64_t groups = K / kGroup;
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[R][MC];
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < MC; ++m) acc[r][m] = _mm256_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    __m256i u[R];
    for (int r = 0; r < R; ++r) {
      const uint8_t* p = w + (n0 + r) * (K / 2) + g * (kGroup / 2);
      _mm_prefetch(reinterpret_cast<const char*>(p) + 1024, _MM_HINT_T0);
      u[r] = unpack(p);
    }
    for (int m = 0; m < MC; ++m) {
      const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq.values.data() + (m0 + m) * K + g * kGroup));
      const float sx = xq.scale[(m0 + m) * groups + g];
      for (int r = 0; r < R; ++r) {
        const __m256i dot = _mm256_madd_epi16(_mm256_maddubs_epi16(u[r], xv), ones);  // 8 sums of 4 products
        const __m256 scale = _mm256_set1_ps(ws[(n0 + r) * groups + g] * sx);
        acc[r][m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, acc[r][m]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < MC; ++m) {
      const float* s = ws + (n0 + r) * groups;
      const float* o = xq.offset.data() + (m0 + m) * groups;
      float offset = 0.0f;
      for (int64_t g = 0; g < groups; ++g) offset += s[g] * o[g];
      y[(m0 + m) * N + n0 + r] = sum_avx2(acc[r][m]) - offset;
    }
}

template <int R>
void rows(const QuantizedRows& xq, int64_t M, const uint8_t* w, const float* ws, int64_t K, float* y, int64_t N,
          int64_t n0) {
  int64_t m0 = 0;
  for (; m0 + 4 <= M; m0 += 4) block<R, 4>(xq, w, ws, K, y, N, n0, m0);
  switch (M - m0) {
    case 3: block<R, 3>(xq, w, ws, K, y, N, n0, m0); break;
    case 2: block<R, 2>(xq, w, ws, K, y, N, n0, m0); break;
    case 1: block<R, 1>(xq, w, ws, K, y, N, n0, m0); break;
    default: break;
  }
}

bool has_avx2_fma() { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }

}  // namespace

bool supported() { return has_avx2_fma(); }

torch::Tensor int4_matvec(const torch::Tensor& x, const torch::Tensor& packed, const torch::Tensor& scales) {
  TORCH_CHECK(has_avx2_fma(), "int4_matvec needs AVX2 and FMA");
  TORCH_CHECK(x.dim() == 2 && packed.dim() == 2 && scales.dim() == 2, "int4_matvec: x [M, K], packed [N, K/2], scales [N, K/32]");
  const int64_t M = x.size(0), K = x.size(1), N = packed.size(0);
  TORCH_CHECK(K % kGroup == 0 && packed.size(1) * 2 == K && scales.size(0) == N && scales.size(1) * kGroup == K,
              "int4_matvec: K must be a multiple of 32 and the shapes must agree");
  TORCH_CHECK(x.scalar_type() == torch::kFloat32 && packed.scalar_type() == torch::kUInt8 &&
              scales.scalar_type() == torch::kFloat32, "int4_matvec: float32 x, uint8 packed, float32 scales");
  TORCH_CHECK(x.is_contiguous() && packed.is_contiguous() && scales.is_contiguous() && x.is_cpu() && packed.is_cpu(),
              "int4_matvec: contiguous CPU tensors");
  auto y = torch::empty({M, N}, x.options());
  const QuantizedRows xq = quantize_rows(x.data_ptr<float>(), M, K);
  const uint8_t* wp = packed.data_ptr<uint8_t>();
  const float* sp = scales.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  constexpr int kRows = 2;
  const int64_t blocks = N / kRows;
  at::parallel_for(0, blocks, 16, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) rows<kRows>(xq, M, wp, sp, K, yp, N, b * kRows);
  });
  for (int64_t n = blocks * kRows; n < N; ++n) rows<1>(xq, M, wp, sp, K, yp, N, n);
  return y;
}

// The float32 weights [N, K] the packed ones stand for (for products over many rows: prefill).
torch::Tensor int4_unpack(const torch::Tensor& packed, const torch::Tensor& scales) {
  TORCH_CHECK(packed.dim() == 2 && scales.dim() == 2 && packed.scalar_type() == torch::kUInt8 &&
              scales.scalar_type() == torch::kFloat32 && packed.is_contiguous() && scales.is_contiguous() &&
              packed.size(0) == scales.size(0) && packed.size(1) * 2 == scales.size(1) * kGroup,
              "int4_unpack: contiguous packed [N, K/2] uint8 and scales [N, K/32] float32");
  const int64_t N = packed.size(0), K = packed.size(1) * 2, groups = K / kGroup;
  auto w = torch::empty({N, K}, scales.options());
  const uint8_t* p = packed.data_ptr<uint8_t>();
  const float* s = scales.data_ptr<float>();
  float* out = w.data_ptr<float>();
  at::parallel_for(0, N * groups, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {  // group i: row i / groups, group i % groups
      const uint8_t* bytes = p + i * (kGroup / 2);
      float* values = out + i * kGroup;
      for (int64_t j = 0; j < kGroup / 2; ++j) {
        values[j] = static_cast<float>((bytes[j] & 0x0F) - 8) * s[i];
        values[j + kGroup / 2] = static_cast<float>((bytes[j] >> 4) - 8) * s[i];
      }
    }
  });
  return w;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("int4_unpack", &int4_unpack, "float32 weights [N, K] from packed 4-bit ones and their group scales");
  m.def("supported", &supported, "whether this CPU has the instructions the kernel needs");
  m.def("int4_matvec", &int4_matvec, "y = x W^T, float32 x [M, K], 4-bit W [N, K] in groups of 32 with float32 scales");
}
