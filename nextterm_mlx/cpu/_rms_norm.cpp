/*
 * RMSNorm over the last axis, x * (1 / sqrt(mean(x^2) + eps)) * weight, as an
 * MLX primitive for the CPU; and, as a second one, the norm of each head of a
 * query or key projection followed by its rotary embedding.
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
#include <functional>
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

/* 1 / sqrt(mean(x^2) + eps) of one row, its squares summed in one fixed order. */
float inverse_rms(const float *x, int width, float eps) {
  float sums[LANES] = {0};
  int k = 0;
  for (; k + LANES <= width; k += LANES)
    for (int lane = 0; lane < LANES; ++lane) sums[lane] += x[k + lane] * x[k + lane];
  float sum = ((sums[0] + sums[4]) + (sums[1] + sums[5])) + ((sums[2] + sums[6]) + (sums[3] + sums[7]));
  for (; k < width; ++k) sum += x[k] * x[k];
  return 1.0f / std::sqrt(sum * (1.0f / static_cast<float>(width)) + eps);
}

void rms_norm_rows(const float *x, const float *weight, float *out, size_t rows, int width, float eps) {
  for (size_t row = 0; row < rows; ++row, x += width, out += width) {
    const float scale = inverse_rms(x, width, eps);
    for (int i = 0; i < width; ++i) out[i] = (x[i] * scale) * weight[i];
  }
}

/*
 * Each head of x (batch, length, heads * width) normed, then rotated by the
 * tables of its position, into out (batch, heads, length, width):
 * out[i] = n[i] * cosines[i] + n[partner(i)] * sines[i], partner(i) being i's
 * counterpart in the other half of the head. With cosines [cos, cos] and
 * sines [-sin, sin] those are the products and sums of the rotation in
 * kernels.py's rotation_from_tables, each rounded as there.
 */
void norm_and_rotate_heads(const float *x, const float *weight, const float *cosines, const float *sines, float *out,
                           int batch, int length, int heads, int width, float eps) {
  const int half = width / 2;
  std::vector<float> normed(width);
  for (int b = 0; b < batch; ++b)
    for (int position = 0; position < length; ++position)
      for (int head = 0; head < heads; ++head) {
        const float *row = x + ((static_cast<size_t>(b) * length + position) * heads + head) * width;
        float *rotated = out + ((static_cast<size_t>(b) * heads + head) * length + position) * width;
        const float *cos = cosines + static_cast<size_t>(position) * width;
        const float *sin = sines + static_cast<size_t>(position) * width;
        const float scale = inverse_rms(row, width, eps);
        for (int i = 0; i < width; ++i) normed[i] = (row[i] * scale) * weight[i];
        for (int i = 0; i < half; ++i) {
          rotated[i] = normed[i] * cos[i] + normed[i + half] * sin[i];
          rotated[i + half] = normed[i + half] * cos[i + half] + normed[i] * sin[i + half];
        }
      }
}

/* The gradients for `argnums` of `reference`, MLX operations that compute
 * what a primitive does, so that training goes through MLX's own. */
std::vector<mx::array> gradients_of(const std::function<std::vector<mx::array>(const std::vector<mx::array> &)> &reference,
                                    const std::vector<mx::array> &primals, const std::vector<mx::array> &cotangents,
                                    const std::vector<int> &argnums) {
  std::vector<mx::array> all = mx::vjp(reference, primals, cotangents).second;
  std::vector<mx::array> grads;
  for (int arg : argnums) grads.push_back(all[arg]);
  return grads;
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
    return gradients_of(mlx_rms_norm, primals, cotangents, argnums);
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

/* rotated_heads's output for x (batch, length, heads * width): (batch, heads, length, width). */
mx::Shape heads_first(const mx::array &x, int heads) {
  return {x.shape(0), heads, x.shape(1), x.shape(2) / heads};
}

/* rotated_heads's operations as MLX's: the reference its gradients are taken from. */
mx::array rotated_heads_by_mlx(const mx::array &x, const mx::array &weight, const mx::array &cosines,
                               const mx::array &sines, int heads, float eps, mx::Stream s) {
  int batch = x.shape(0), length = x.shape(1), width = weight.shape(0), half = width / 2;
  mx::array normed = mx::fast::rms_norm(mx::reshape(x, {batch, length, heads, width}, s), weight, eps, s);
  normed = mx::transpose(normed, {0, 2, 1, 3}, s);
  mx::array partners = mx::concatenate({mx::slice(normed, {0, 0, 0, half}, {batch, heads, length, width}, s),
                                        mx::slice(normed, {0, 0, 0, 0}, {batch, heads, length, half}, s)},
                                       3, s);
  return mx::add(mx::multiply(normed, cosines, s), mx::multiply(partners, sines, s), s);
}

class RotatedHeads : public mx::Primitive {
 public:
  RotatedHeads(mx::Stream stream, int heads, float eps) : mx::Primitive(stream), heads_(heads), eps_(eps) {}

  void eval_cpu(const std::vector<mx::array> &inputs, std::vector<mx::array> &outputs) override {
    mx::array &out = outputs[0];
    out.set_data(mx::allocator::malloc(out.nbytes()));
    auto &encoder = mx::cpu::get_command_encoder(stream());
    std::vector<mx::array> rows = nextterm::row_major(inputs, encoder);
    for (const mx::array &input : rows) encoder.set_input_array(input);
    encoder.set_output_array(out);
    const mx::array &x = rows[0];
    encoder.dispatch([x = x.data<float>(), weight = rows[1].data<float>(), cosines = rows[2].data<float>(),
                      sines = rows[3].data<float>(), out = out.data<float>(), batch = x.shape(0),
                      length = x.shape(1), heads = heads_, width = out.shape(3), eps = eps_]() {
      norm_and_rotate_heads(x, weight, cosines, sines, out, batch, length, heads, width, eps);
    });
  }

  void eval_gpu(const std::vector<mx::array> &, std::vector<mx::array> &) override {
    throw std::runtime_error("[rotated_heads] has no GPU implementation");
  }

  /* Gradients through MLX's own operations, so that training through it works. */
  std::vector<mx::array> vjp(const std::vector<mx::array> &primals, const std::vector<mx::array> &cotangents,
                             const std::vector<int> &argnums, const std::vector<mx::array> &) override {
    mx::Stream s = stream();
    int heads = heads_;
    float eps = eps_;
    auto by_mlx = [heads, eps, s](const std::vector<mx::array> &in) {
      return std::vector<mx::array>{rotated_heads_by_mlx(in[0], in[1], in[2], in[3], heads, eps, s)};
    };
    return gradients_of(by_mlx, primals, cotangents, argnums);
  }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array> &inputs) override {
    return {heads_first(inputs[0], heads_)};
  }

  const char *name() const override { return "RotatedHeads"; }
  bool is_equivalent(const mx::Primitive &other) const override {
    auto &that = static_cast<const RotatedHeads &>(other);
    return heads_ == that.heads_ && eps_ == that.eps_;
  }

 private:
  int heads_;
  float eps_;
};

mx::array rotated_heads(const mx::array &x, const mx::array &weight, const mx::array &cosines,
                        const mx::array &sines, int heads, float eps) {
  bool float32 = x.dtype() == mx::float32 && weight.dtype() == mx::float32 && cosines.dtype() == mx::float32 &&
                 sines.dtype() == mx::float32;
  int width = weight.ndim() == 1 ? weight.shape(0) : 0;
  bool shaped = x.ndim() == 3 && heads > 0 && width > 0 && width % 2 == 0 && x.shape(2) == heads * width &&
                x.size() > 0 && cosines.shape() == mx::Shape{x.shape(1), width} && sines.shape() == cosines.shape();
  if (!float32 || !shaped)
    throw std::invalid_argument(
        "[rotated_heads] takes float32 x (batch, length, heads * width), weight (width) with width even, and "
        "cosines and sines (length, width)");
  mx::Stream stream = mx::default_stream(mx::Device::cpu);
  return mx::array(heads_first(x, heads), mx::float32,
                   std::make_shared<RotatedHeads>(stream, heads, eps), std::vector<mx::array>{x, weight, cosines, sines});
}

}  // namespace

void bind_rms_norm(nb::module_ &m) {
  m.def("rms_norm", &rms_norm, "x"_a, "weight"_a, "eps"_a,
        "x * (1 / sqrt(mean(x ** 2) + eps)) * weight over the last axis, on the default CPU stream, for "
        "float32 arrays.");
  m.def("rotated_heads", &rotated_heads, "x"_a, "weight"_a, "cosines"_a, "sines"_a, "heads"_a, "eps"_a,
        "Each head of x (batch, length, heads * width) through RMSNorm, then rotated: n * cosines + "
        "n_halves_swapped * sines, cosines and sines (length, width) by position; (batch, heads, length, width), "
        "on the default CPU stream, for float32 arrays.");
}
