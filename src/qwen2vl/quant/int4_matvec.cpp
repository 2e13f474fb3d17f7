// y = x W^T for a few float32 rows x [M, K] and 4-bit weights W [N, K] (groups of 32 along K, one
// float32 scale per group), the way llama.cpp's Q4_0 runs on a CPU: each 32 activations of a row
// are rounded to int8 with their own scale, and the products are formed in integers (vpmaddubsw),
// two groups per 32-byte load of weights, and scaled once per group. Decode streams each weight
// once per token, so 4.5 bits per weight instead of 16 (bf16) or 8 (int8) is what makes it fast.
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
constexpr int64_t kPair = 2 * kGroup;  // the kernel's step: two groups, one 32-byte load of a weight row

// Activations rounded to int8 per group of 32 (scale = largest magnitude / 127), laid out for the
// kernel one pair of groups g, g + 1 at a time, each pair as two 32-byte vectors that line up with
// the nibbles of a 32-byte weight load: [x_g[0..16) x_g+1[0..16)] (the low nibbles' weights) and
// [x_g[16..32) x_g+1[16..32)] (the high nibbles'). An odd last group pairs with zeros.
struct QuantizedRows {
  int64_t pairs;
  std::vector<int8_t> values;   // [M, pairs, 64]
  std::vector<float> scale;     // [M, pairs, 8]: each group's scale over its four int32 lanes
  std::vector<int32_t> offset;  // [M, pairs, 8]: 8 * the lanes' activation sums (the weights' +8)
};

__attribute__((target("avx2,fma")))
QuantizedRows quantize_rows(const float* x, int64_t M, int64_t K) {
  const int64_t groups = K / kGroup, pairs = (groups + 1) / 2;
  QuantizedRows q{pairs, std::vector<int8_t>(M * pairs * kPair, 0), std::vector<float>(M * pairs * 8, 0.0f),
                  std::vector<int32_t>(M * pairs * 8, 0)};
  for (int64_t m = 0; m < M; ++m)
    for (int64_t g = 0; g < groups; ++g) {
      const float* v = x + m * K + g * kGroup;
      float amax = 0.0f;
      for (int64_t t = 0; t < kGroup; ++t) amax = std::max(amax, std::fabs(v[t]));
      const float inverse = amax > 0.0f ? 127.0f / amax : 0.0f;
      const int64_t pair = m * q.pairs + g / 2, half = (g % 2) * (kGroup / 2);
      int8_t* low = q.values.data() + pair * kPair + half;  // weights 0..15 of the group
      int8_t* high = low + kGroup;                          // weights 16..31
      for (int64_t t = 0; t < kGroup / 2; ++t) {
        low[t] = static_cast<int8_t>(std::nearbyint(v[t] * inverse));
        high[t] = static_cast<int8_t>(std::nearbyint(v[t + kGroup / 2] * inverse));
      }
      for (int lane = 0; lane < 4; ++lane) q.scale[pair * 8 + (g % 2) * 4 + lane] = amax / 127.0f;
    }
  // The offsets by the very operations the kernel applies to weights, with every weight 8.
  const __m256i eights = _mm256_set1_epi8(8), ones = _mm256_set1_epi16(1);
  for (int64_t i = 0; i < M * q.pairs; ++i) {
    const __m256i* v = reinterpret_cast<const __m256i*>(q.values.data() + i * kPair);
    const __m256i sums = _mm256_add_epi16(_mm256_maddubs_epi16(eights, _mm256_loadu_si256(v)),
                                          _mm256_maddubs_epi16(eights, _mm256_loadu_si256(v + 1)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q.offset.data() + i * 8), _mm256_madd_epi16(sums, ones));
  }
  return q;
}

__attribute__((target("avx2,fma")))
float sum_avx2(__m256 v) {
  const __m128 half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 quarter = _mm_add_ps(half, _mm_movehl_ps(half, half));
  return _mm_cvtss_f32(_mm_add_ss(quarter, _mm_shuffle_ps(quarter, quarter, 1)));
}

// One weight row's pair p: 32 bytes (16 for a lone last group, the rest zero) and its two group
// scales spread over the int32 lanes [s_g x4, s_g+1 x4] (zero for a missing group).
__attribute__((target("avx2,fma"))) inline void load_pair(const uint8_t* row, const float* row_scales, int64_t p,
                                                         int64_t groups, __m256i* bytes, __m256* scales) {
  const __m256i lanes = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
  if (2 * p + 1 < groups) {
    *bytes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + p * kGroup));
    const __m128 two = _mm_castsi128_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(row_scales + 2 * p)));
    *scales = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(two), lanes);
  } else {
    *bytes = _mm256_zextsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + p * kGroup)));
    *scales = _mm256_setr_ps(row_scales[2 * p], row_scales[2 * p], row_scales[2 * p], row_scales[2 * p], 0, 0, 0, 0);
  }
}

// Weight rows [n0, n0 + R) against activation rows [m0, m0 + MC).
template <int R, int MC>
__attribute__((target("avx2,fma")))
void block(const QuantizedRows& xq, const uint8_t* w, const float* ws, int64_t K, float* y, int64_t N,
           int64_t n0, int64_t m0) {
  const int64_t groups = K / kGroup;
  const __m256i ones = _mm256_set1_epi16(1), nibble = _mm256_set1_epi8(0x0F);
  __m256 acc[R][MC];
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < MC; ++m) acc[r][m] = _mm256_setzero_ps();
  for (int64_t p = 0; p < xq.pairs; ++p) {
    __m256i low[R], high[R];
    __m256 wscale[R];
    for (int r = 0; r < R; ++r) {
      const uint8_t* row = w + (n0 + r) * (K / 2);
      if ((p & 1) == 0) _mm_prefetch(reinterpret_cast<const char*>(row + p * kGroup) + 1024, _MM_HINT_T0);
      __m256i bytes;
      load_pair(row, ws + (n0 + r) * groups, p, groups, &bytes, &wscale[r]);
      low[r] = _mm256_and_si256(bytes, nibble);
      high[r] = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), nibble);
    }
    for (int m = 0; m < MC; ++m) {
      const int64_t i = (m0 + m) * xq.pairs + p;
      const __m256i* xv = reinterpret_cast<const __m256i*>(xq.values.data() + i * kPair);
      const __m256i xlow = _mm256_loadu_si256(xv), xhigh = _mm256_loadu_si256(xv + 1);
      const __m256i offset = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq.offset.data() + i * 8));
      const __m256 xscale = _mm256_loadu_ps(xq.scale.data() + i * 8);
      for (int r = 0; r < R; ++r) {
        // int16 sums of 2 products, both halves (|sum| <= 2 * 2 * 15 * 127), then int32 sums of 8 per lane
        const __m256i pairs16 = _mm256_add_epi16(_mm256_maddubs_epi16(low[r], xlow),
                                                 _mm256_maddubs_epi16(high[r], xhigh));
        const __m256i dot = _mm256_sub_epi32(_mm256_madd_epi16(pairs16, ones), offset);
        acc[r][m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(wscale[r], xscale), acc[r][m]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < MC; ++m) y[(m0 + m) * N + n0 + r] = sum_avx2(acc[r][m]);
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
