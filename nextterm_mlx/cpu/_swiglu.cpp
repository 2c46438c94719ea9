/*
 * SwiGLU, silu(gate) * x, as an MLX primitive for the CPU, eight lanes at a time.
 *
 * Every layer's MLP takes one exp per element of its 3072-wide hidden layer,
 * so at 8 or 32 rows a step MLX's scalar exp (see _vector_exp.h) makes
 * SwiGLU cost more than anything else that is not a weight product. With
 * the vectorised exp it stays within 4 ulps of the exact SiLU (the tests
 * check it against float64).
 */

#include <cmath>
#include <stdexcept>
#include <vector>

#include <nanobind/nanobind.h>

#include "_vector_exp.h"
#include "_row_major.h"
#include "mlx/backend/cpu/encoder.h"
#include "mlx/mlx.h"
#include "mlx/primitives.h"

namespace mx = mlx::core;
namespace nb = nanobind;
using namespace nb::literals;

namespace {

/* The last few elements. Below g = -88 SiLU is under 1e-36 and comes out as
 * 0, as in swiglu_avx2 (and SiLU of -inf as its limit, 0). */
void swiglu_scalar(const float *gate, const float *x, float *out, size_t count) {
  for (size_t i = 0; i < count; ++i) {
    float silu = gate[i] < -88.0f ? 0.0f : gate[i] / (1.0f + std::exp(-gate[i]));
    out[i] = silu * x[i];
  }
}

/* silu(g) = g / (1 + exp(-g)), with exp(-g) clamped to [exp(-87), exp(88)]
 * (see exp_avx2). */
__attribute__((target("avx2,fma"))) void swiglu_avx2(const float *gate, const float *x, float *out,
                                                     size_t count) {
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 lowest = _mm256_set1_ps(-87.0f), highest = _mm256_set1_ps(88.0f);
  size_t i = 0;
  for (; i + 8 <= count; i += 8) {
    __m256 g = _mm256_loadu_ps(gate + i);
    __m256 minus_g = _mm256_sub_ps(_mm256_setzero_ps(), g);
    __m256 exp_minus_g = exp_avx2(_mm256_min_ps(_mm256_max_ps(minus_g, lowest), highest));
    __m256 silu = _mm256_div_ps(g, _mm256_add_ps(one, exp_minus_g));
    silu = _mm256_andnot_ps(_mm256_cmp_ps(minus_g, highest, _CMP_GT_OQ), silu);
    _mm256_storeu_ps(out + i, _mm256_mul_ps(silu, _mm256_loadu_ps(x + i)));
  }
  swiglu_scalar(gate + i, x + i, out + i, count - i);
}

class SwiGLU : public mx::Primitive {
 public:
  explicit SwiGLU(mx::Stream stream) : mx::Primitive(stream) {}

  void eval_cpu(const std::vector<mx::array> &inputs, std::vector<mx::array> &outputs) override {
    mx::array &out = outputs[0];
    out.set_data(mx::allocator::malloc(out.nbytes()));
    auto &encoder = mx::cpu::get_command_encoder(stream());
    std::vector<mx::array> rows = nextterm::row_major(inputs, encoder);
    const mx::array &gate = rows[0], &x = rows[1];
    encoder.set_input_array(gate);
    encoder.set_input_array(x);
    encoder.set_output_array(out);
    encoder.dispatch([gate = gate.data<float>(), x = x.data<float>(), out = out.data<float>(),
                      count = out.size()]() { swiglu_avx2(gate, x, out, count); });
  }

  void eval_gpu(const std::vector<mx::array> &, std::vector<mx::array> &) override {
    throw std::runtime_error("[swiglu] has no GPU implementation");
  }

  /* Gradients, so that training through a model that uses it still works. */
  std::vector<mx::array> vjp(const std::vector<mx::array> &primals, const std::vector<mx::array> &cotangents,
                             const std::vector<int> &argnums, const std::vector<mx::array> &) override {
    const mx::array &gate = primals[0], &x = primals[1], &cotangent = cotangents[0];
    mx::Stream s = stream();
    mx::array sigmoid = mx::sigmoid(gate, s);
    std::vector<mx::array> grads;
    for (int arg : argnums) {
      if (arg == 0) {
        // d silu(g) / dg = sigmoid(g) * (1 + g * (1 - sigmoid(g)))
        mx::array slope = mx::multiply(
            sigmoid, mx::add(mx::array(1.0f), mx::multiply(gate, mx::subtract(mx::array(1.0f), sigmoid, s), s), s), s);
        grads.push_back(mx::multiply(cotangent, mx::multiply(x, slope, s), s));
      } else {
        grads.push_back(mx::multiply(cotangent, mx::multiply(gate, sigmoid, s), s));
      }
    }
    return grads;
  }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array> &inputs) override {
    return {inputs[0].shape()};
  }

  const char *name() const override { return "SwiGLU"; }
  bool is_equivalent(const mx::Primitive &) const override { return true; }
};

mx::array swiglu(const mx::array &gate, const mx::array &x) {
  if (gate.dtype() != mx::float32 || x.dtype() != mx::float32 || gate.shape() != x.shape())
    throw std::invalid_argument("[swiglu] takes two float32 arrays of the same shape");
  mx::Stream stream = mx::default_stream(mx::Device::cpu);
  return mx::array(gate.shape(), mx::float32, std::make_shared<SwiGLU>(stream), std::vector<mx::array>{gate, x});
}

}  // namespace

void bind_swiglu(nb::module_ &m) {
  m.def("swiglu", &swiglu, "gate"_a, "x"_a,
        "silu(gate) * x on the default CPU stream, for float32 arrays of one shape.");
}
