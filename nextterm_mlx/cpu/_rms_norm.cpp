/*
 * RMSNorm over the last axis, x * (1 / sqrt(mean(x^2) + eps)) * weight, as an
 * MLX primitive for the CPU.
 *
 * On a CPU, mx.fast.rms_norm is MLX's composition of a dozen operations
 * (square, sum, mean, rsqrt, multiplies, broadcasts). A Qwen3 layer takes
 * four norms (before attention and the MLP, and of each head's queries and
 * keys), and the host builds and schedules every one of those operations in
 * every forward pass. Here a norm is one operation. It multiplies as MLX's
 * composition does, (x * r) * weight with r = 1 / sqrt(sum * (1 / n) + eps);
 * only the order of the squares' sum differs: eight running sums, added up
 * one way, the same for every row whatever their number, so that a row is
 * normalised alike alone and in a batch.
 */

#include <cmath>
#include <stdexcept>
#include <vector>

#include <nanobind/nanobind.h>

#include "_row_major.h"
#include "mlx/backend/cpu/encoder.h"
#include "mlx/fast.h"
#include "mlx/mlx.h"
#include "mlx/primitives.h"
#include "mlx/transforms.h"

namespace mx = mlx::core;
namespace nb = nanobind;
using namespace nb::literals;

namespace {

constexpr int LANES = 8;

void rms_norm_rows(const float *x, const float *weight, float *out, size_t rows, int width, float eps) {
  const float inverse_width = 1.0f / static_cast<float>(width);
  for (size_t row = 0; row < rows; ++row, x += width, out += width) {
    float sums[LANES] = {0};
    int k = 0;
    for (; k + LANES <= width; k += LANES)
      for (int lane = 0; lane < LANES; ++lane) sums[lane] += x[k + lane] * x[k + lane];
    float sum = ((sums[0] + sums[4]) + (sums[1] + sums[5])) + ((sums[2] + sums[6]) + (sums[3] + sums[7]));
    for (; k < width; ++k) sum += x[k] * x[k];
    const float scale = 1.0f / std::sqrt(sum * inverse_width + eps);
    for (int i = 0; i < width; ++i) out[i] = (x[i] * scale) * weight[i];
  }
}

class RMSNorm : public mx::Primitive {
 public:
  RMSNorm(mx::Stream stream, float eps) : mx::Primitive(stream), eps_(eps) {}

  void eval_cpu(const std::vector<mx::array> &inputs, std::vector<mx::array> &outputs) override {
    mx::array &out = outputs[0];
    out.set_data(mx::allocator::malloc(out.nbytes()));
    auto &encoder = mx::cpu::get_command_encoder(stream());
    std::vector<mx::array> rows = nextterm::row_major(inputs, encoder);
    const mx::array &x = rows[0], &weight = rows[1];
    encoder.set_input_array(x);
    encoder.set_input_array(weight);
    encoder.set_output_array(out);
    int width = x.shape(-1);
    encoder.dispatch([x = x.data<float>(), weight = weight.data<float>(), out = out.data<float>(),
                      count = x.size() / width, width, eps = eps_]() {
      rms_norm_rows(x, weight, out, count, width, eps);
    });
  }

  void eval_gpu(const std::vector<mx::array> &, std::vector<mx::array> &) override {
    throw std::runtime_error("[rms_norm] has no GPU implementation");
  }

  /* Gradients through MLX's own rms_norm, so that training through it works. */
  std::vector<mx::array> vjp(const std::vector<mx::array> &primals, const std::vector<mx::array> &cotangents,
                             const std::vector<int> &argnums, const std::vector<mx::array> &) override {
    mx::Stream s = stream();
    float eps = eps_;
    auto mlx_rms_norm = [eps, s](const std::vector<mx::array> &in) {
      return std::vector<mx::array>{mx::fast::rms_norm(in[0], in[1], eps, s)};
    };
    std::vector<mx::array> all = mx::vjp(mlx_rms_norm, primals, cotangents).second;
    std::vector<mx::array> grads;
    for (int arg : argnums) grads.push_back(all[arg]);
    return grads;
  }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array> &inputs) override {
    return {inputs[0].shape()};
  }

  const char *name() const override { return "RMSNorm"; }
  bool is_equivalent(const mx::Primitive &other) const override {
    return eps_ == static_cast<const RMSNorm &>(other).eps_;
  }

 private:
  float eps_;
};

mx::array rms_norm(const mx::array &x, const mx::array &weight, float eps) {
  if (x.dtype() != mx::float32 || weight.dtype() != mx::float32 || x.ndim() < 1 || weight.ndim() != 1 ||
      x.shape(-1) != weight.shape(0) || x.size() == 0)
    throw std::invalid_argument("[rms_norm] takes float32 x (..., width) and a float32 weight (width)");
  mx::Stream stream = mx::default_stream(mx::Device::cpu);
  return mx::array(x.shape(), mx::float32, std::make_shared<RMSNorm>(stream, eps), std::vector<mx::array>{x, weight});
}

}  // namespace

void bind_rms_norm(nb::module_ &m) {
  m.def("rms_norm", &rms_norm, "x"_a, "weight"_a, "eps"_a,
        "x * (1 / sqrt(mean(x ** 2) + eps)) * weight over the last axis, on the default CPU stream, for "
        "float32 arrays.");
}
