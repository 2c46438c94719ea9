/*
 * A Linear layer's product, x @ weight.T, as an MLX primitive for the CPU.
 *
 * MLX's CPU matmul calls whichever cblas_sgemm the process resolved when
 * mlx.core was loaded: the wheel's reference BLAS, unless a faster one was
 * put first in the global symbol scope before that. This primitive calls the
 * product function whose address it is given instead (the skinny-product kernel, or
 * OpenBLAS's cblas_sgemm, both loaded privately by nextterm_mlx/cpu/blas.py),
 * so that the model's speed does not depend on what was imported first. It
 * passes the very arguments MLX's matmul passes for x @ weight.T, so the
 * numbers are the same as MLX's on the same BLAS.
 *
 * A bfloat16 weight (a model's weights as stored) is multiplied as it is,
 * by the function at the address given for it (nextterm_linear_bf16 in
 * _skinny.c), in float32: the numbers of the widened weight's product. So
 * is an 8-bit weight in mlx-lm's affine format (uint32 words of four bytes,
 * with float32 scales and biases; nextterm_linear_q8).
 *
 * Linears is the products of several Linear layers of the same input (a
 * layer's query, key and value projections; its gate and up projections):
 * one operation with an output each, which the kernel computes as one job
 * of its threads (nextterm_linear_several), each output the number the
 * layer's own product gives.
 */

#include <cstdint>
#include <stdexcept>
#include <vector>

#include <nanobind/nanobind.h>
#include <nanobind/stl/vector.h>

#include "_row_major.h"
#include "mlx/backend/cpu/encoder.h"
#include "mlx/mlx.h"
#include "mlx/primitives.h"

namespace mx = mlx::core;
namespace nb = nanobind;
using namespace nb::literals;

namespace {

/* CBLAS's row-major layout and transposition flags. */
enum { ROW_MAJOR = 101, NO_TRANS = 111, TRANS = 112 };

typedef void (*sgemm_fn)(int order, int trans_a, int trans_b, int m, int n, int k, float alpha, const float *a,
                         int lda, const float *b, int ldb, float beta, float *c, int ldc);
typedef void (*bf16_product_fn)(int m, int n, int k, const float *a, const uint16_t *w, float *c);
typedef void (*q8_product_fn)(int m, int n, int k, const float *a, const uint8_t *q, const float *scales,
                              const float *biases, float *c);
typedef void (*several_fn)(int count, int type, int m, int k, const float *a, const int *n, const void *const *w,
                           const float *const *scales, const float *const *biases, float *const *c);

/* The weight types as _skinny.c numbers them. */
enum { F32, BF16, Q8 };

/* The gradient of x @ weight.T with respect to x, for the cotangent of its output. */
mx::array input_gradient(const mx::array &cotangent, const mx::array &weight, mx::Stream s) {
  return mx::matmul(cotangent, mx::astype(weight, mx::float32, s), s);
}

/* The gradient of x @ weight.T with respect to the weight, in the weight's dtype. */
mx::array weight_gradient(const mx::array &x, const mx::array &weight, const mx::array &cotangent, mx::Stream s) {
  int depth = x.shape(-1), outputs_per_row = weight.shape(0);
  mx::array rows_of_x = mx::reshape(x, {-1, depth}, s);
  mx::array rows_of_cotangent = mx::reshape(cotangent, {-1, outputs_per_row}, s);
  return mx::astype(mx::matmul(mx::transpose(rows_of_cotangent, s), rows_of_x, s), weight.dtype(), s);
}

/* x's shape with the last axis the weight's outputs. */
mx::Shape product_shape(const mx::array &x, const mx::array &weight) {
  mx::Shape shape = x.shape();
  shape.back() = weight.shape(0);
  return shape;
}

class Linear : public mx::Primitive {
 public:
  Linear(mx::Stream stream, uintptr_t product) : mx::Primitive(stream), product_(product) {}

  void eval_cpu(const std::vector<mx::array> &given, std::vector<mx::array> &outputs) override {
    mx::array &out = outputs[0];
    out.set_data(mx::allocator::malloc(out.nbytes()));
    auto &encoder = mx::cpu::get_command_encoder(stream());
    std::vector<mx::array> inputs = nextterm::row_major(given, encoder);
    const mx::array &x = inputs[0], &weight = inputs[1];
    for (const mx::array &input : inputs) encoder.set_input_array(input);
    encoder.set_output_array(out);
    int depth = x.shape(-1), outputs_per_row = weight.shape(0), rows = x.size() / depth;
    if (weight.dtype() == mx::uint32) {
      encoder.dispatch([x = x.data<float>(), weight = weight.data<uint8_t>(), scales = inputs[2].data<float>(),
                        biases = inputs[3].data<float>(), out = out.data<float>(), rows, outputs_per_row, depth,
                        product = reinterpret_cast<q8_product_fn>(product_)]() {
        product(rows, outputs_per_row, depth, x, weight, scales, biases, out);
      });
      return;
    }
    if (weight.dtype() == mx::bfloat16) {
      encoder.dispatch([x = x.data<float>(), weight = weight.data<uint16_t>(), out = out.data<float>(), rows,
                        outputs_per_row, depth, product = reinterpret_cast<bf16_product_fn>(product_)]() {
        product(rows, outputs_per_row, depth, x, weight, out);
      });
      return;
    }
    encoder.dispatch([x = x.data<float>(), weight = weight.data<float>(), out = out.data<float>(), rows,
                      outputs_per_row, depth, product = reinterpret_cast<sgemm_fn>(product_)]() {
      product(ROW_MAJOR, NO_TRANS, TRANS, rows, outputs_per_row, depth, 1.0f, x, depth, weight, depth, 0.0f, out,
              outputs_per_row);
    });
  }

  void eval_gpu(const std::vector<mx::array> &, std::vector<mx::array> &) override {
    throw std::runtime_error("[linear] has no GPU implementation");
  }

  /* Gradients through MLX's own matmul, so that training through it works. */
  std::vector<mx::array> vjp(const std::vector<mx::array> &primals, const std::vector<mx::array> &cotangents,
                             const std::vector<int> &argnums, const std::vector<mx::array> &) override {
    const mx::array &x = primals[0], &weight = primals[1], &cotangent = cotangents[0];
    if (weight.dtype() == mx::uint32) throw std::invalid_argument("[linear] has no gradient for 8-bit weights");
    std::vector<mx::array> grads;
    for (int arg : argnums)
      grads.push_back(arg == 0 ? input_gradient(cotangent, weight, stream())
                               : weight_gradient(x, weight, cotangent, stream()));
    return grads;
  }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array> &inputs) override {
    return {product_shape(inputs[0], inputs[1])};
  }

  const char *name() const override { return "Linear"; }
  bool is_equivalent(const mx::Primitive &other) const override {
    return product_ == static_cast<const Linear &>(other).product_;
  }

 private:
  uintptr_t product_;
};

/* The products of several Linear layers of one input: inputs x and each
 * layer's weight (and its scales and biases, for 8-bit weights), an output
 * each. */
class Linears : public mx::Primitive {
 public:
  Linears(mx::Stream stream, uintptr_t product) : mx::Primitive(stream), product_(product) {}

  void eval_cpu(const std::vector<mx::array> &given, std::vector<mx::array> &outputs) override {
    for (mx::array &out : outputs) out.set_data(mx::allocator::malloc(out.nbytes()));
    auto &encoder = mx::cpu::get_command_encoder(stream());
    std::vector<mx::array> inputs = nextterm::row_major(given, encoder);
    for (const mx::array &input : inputs) encoder.set_input_array(input);
    for (mx::array &out : outputs) encoder.set_output_array(out);
    const mx::array &x = inputs[0];
    int count = outputs.size(), inputs_per_layer = (inputs.size() - 1) / count;
    int type = inputs[1].dtype() == mx::uint32 ? Q8 : inputs[1].dtype() == mx::bfloat16 ? BF16 : F32;
    std::vector<int> widths;
    std::vector<const void *> weights;
    std::vector<const float *> scales, biases;
    std::vector<float *> results;
    widths.reserve(count), weights.reserve(count), results.reserve(count);
    if (type == Q8) scales.reserve(count), biases.reserve(count);
    for (int i = 0; i < count; ++i) {
      const mx::array &weight = inputs[1 + inputs_per_layer * i];
      widths.push_back(weight.shape(0));
      weights.push_back(weight.data<void>());
      if (type == Q8) {
        scales.push_back(inputs[2 + inputs_per_layer * i].data<float>());
        biases.push_back(inputs[3 + inputs_per_layer * i].data<float>());
      }
      results.push_back(outputs[i].data<float>());
    }
    int depth = x.shape(-1), rows = x.size() / depth;
    encoder.dispatch([x = x.data<float>(), count, type, rows, depth, widths = std::move(widths),
                      weights = std::move(weights), scales = std::move(scales), biases = std::move(biases),
                      results = std::move(results), product = reinterpret_cast<several_fn>(product_)]() {
      product(count, type, rows, depth, x, widths.data(), weights.data(), type == Q8 ? scales.data() : nullptr,
              type == Q8 ? biases.data() : nullptr, results.data());
    });
  }

  void eval_gpu(const std::vector<mx::array> &, std::vector<mx::array> &) override {
    throw std::runtime_error("[linears] has no GPU implementation");
  }

  /* Gradients through MLX's own matmul, as Linear's. */
  std::vector<mx::array> vjp(const std::vector<mx::array> &primals, const std::vector<mx::array> &cotangents,
                             const std::vector<int> &argnums, const std::vector<mx::array> &) override {
    if (primals[1].dtype() == mx::uint32) throw std::invalid_argument("[linears] has no gradient for 8-bit weights");
    const mx::array &x = primals[0];
    std::vector<mx::array> grads;
    for (int arg : argnums) {
      if (arg == 0) {
        mx::array sum = input_gradient(cotangents[0], primals[1], stream());
        for (size_t i = 1; i < cotangents.size(); ++i)
          sum = mx::add(sum, input_gradient(cotangents[i], primals[1 + i], stream()), stream());
        grads.push_back(sum);
      } else {
        grads.push_back(weight_gradient(x, primals[arg], cotangents[arg - 1], stream()));
      }
    }
    return grads;
  }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array> &inputs) override {
    std::vector<mx::Shape> shapes;
    size_t inputs_per_layer = inputs[1].dtype() == mx::uint32 ? 3 : 1;
    for (size_t i = 1; i < inputs.size(); i += inputs_per_layer) shapes.push_back(product_shape(inputs[0], inputs[i]));
    return shapes;
  }

  const char *name() const override { return "Linears"; }
  bool is_equivalent(const mx::Primitive &other) const override {
    return product_ == static_cast<const Linears &>(other).product_;
  }

 private:
  uintptr_t product_;
};

void check_product(uintptr_t product) {
  if (product == 0) throw std::invalid_argument("[linear] needs the address of a product function");
}

/* Refuses what the 8-bit product does not take: an 8-bit weight is uint32
 * words of four bytes, (outputs, depth / 4), with float32 scales and biases
 * (outputs, depth / 64). */
void check_quantized(const mx::array &x, const mx::array &weight, const mx::array &scales, const mx::array &biases) {
  int outputs = weight.ndim() == 2 ? weight.shape(0) : 0, depth = weight.ndim() == 2 ? 4 * weight.shape(1) : 0;
  bool groups_fit = depth > 0 && depth % 64 == 0 && scales.shape() == mx::Shape{outputs, depth / 64} &&
                    biases.shape() == scales.shape();
  if (x.dtype() != mx::float32 || weight.dtype() != mx::uint32 || scales.dtype() != mx::float32 ||
      biases.dtype() != mx::float32 || x.ndim() < 1 || x.shape(-1) != depth || x.size() == 0 || !groups_fit)
    throw std::invalid_argument("[linear] takes float32 x (..., depth), a uint32 weight (outputs, depth / 4) "
                                "and float32 scales and biases (outputs, depth / 64)");
}

void check_plain(const mx::array &x, const mx::array &weight) {
  bool weight_dtype = weight.dtype() == mx::float32 || weight.dtype() == mx::bfloat16;
  if (x.dtype() != mx::float32 || !weight_dtype || weight.ndim() != 2 || x.ndim() < 1 ||
      x.shape(-1) != weight.shape(1) || x.size() == 0 || weight.size() == 0)
    throw std::invalid_argument("[linear] takes float32 x (..., depth) and a float32 or bfloat16 weight "
                                "(outputs, depth)");
}

mx::array quantized_linear(const mx::array &x, const mx::array &weight, const mx::array &scales,
                           const mx::array &biases, uintptr_t product) {
  check_product(product);
  check_quantized(x, weight, scales, biases);
  return mx::array(product_shape(x, weight), mx::float32,
                   std::make_shared<Linear>(mx::default_stream(mx::Device::cpu), product),
                   std::vector<mx::array>{x, weight, scales, biases});
}

mx::array linear(const mx::array &x, const mx::array &weight, uintptr_t product) {
  check_product(product);
  check_plain(x, weight);
  return mx::array(product_shape(x, weight), mx::float32,
                   std::make_shared<Linear>(mx::default_stream(mx::Device::cpu), product),
                   std::vector<mx::array>{x, weight});
}

/* The products of several layers as one Linears operation; `inputs` is x
 * followed by each layer's inputs to the single-layer function. */
std::vector<mx::array> several(const std::vector<mx::array> &inputs, uintptr_t product) {
  auto primitive = std::make_shared<Linears>(mx::default_stream(mx::Device::cpu), product);
  std::vector<mx::Shape> shapes = primitive->output_shapes(inputs);
  std::vector<mx::Dtype> dtypes(shapes.size(), mx::float32);
  return mx::array::make_arrays(std::move(shapes), dtypes, primitive, inputs);
}

std::vector<mx::array> linears(const mx::array &x, const std::vector<mx::array> &weights, uintptr_t product) {
  check_product(product);
  if (weights.size() < 2) throw std::invalid_argument("[linears] takes two weights or more");
  std::vector<mx::array> inputs{x};
  for (const mx::array &weight : weights) {
    check_plain(x, weight);
    if (weight.dtype() != weights[0].dtype()) throw std::invalid_argument("[linears] takes weights of one dtype");
    inputs.push_back(weight);
  }
  return several(inputs, product);
}

std::vector<mx::array> quantized_linears(const mx::array &x, const std::vector<mx::array> &weights,
                                         const std::vector<mx::array> &scales, const std::vector<mx::array> &biases,
                                         uintptr_t product) {
  check_product(product);
  if (weights.size() < 2 || scales.size() != weights.size() || biases.size() != weights.size())
    throw std::invalid_argument("[linears] takes two weights or more, with scales and biases for each");
  std::vector<mx::array> inputs{x};
  for (size_t i = 0; i < weights.size(); ++i) {
    check_quantized(x, weights[i], scales[i], biases[i]);
    inputs.insert(inputs.end(), {weights[i], scales[i], biases[i]});
  }
  return several(inputs, product);
}

}  // namespace

void bind_linear(nb::module_ &m) {
  m.def("linear", &linear, "x"_a, "weight"_a, "product"_a,
        "x @ weight.T on the default CPU stream, for float32 x, computed by the function at the address "
        "`product`: a cblas_sgemm-compatible one for a float32 weight, nextterm_linear_bf16's kind for a "
        "bfloat16 weight.");
  m.def("quantized_linear", &quantized_linear, "x"_a, "weight"_a, "scales"_a, "biases"_a, "product"_a,
        "x @ weight.T for float32 x and an 8-bit weight in mlx-lm's affine format (group 64), computed by "
        "nextterm_linear_q8's kind of function at the address `product`.");
  m.def("linears", &linears, "x"_a, "weights"_a, "product"_a,
        "x @ weight.T for each of two or more float32 or bfloat16 weights of one dtype, as one operation with "
        "an output each, computed by nextterm_linear_several's kind of function at the address `product`.");
  m.def("quantized_linears", &quantized_linears, "x"_a, "weights"_a, "scales"_a, "biases"_a, "product"_a,
        "x @ weight.T for each of two or more 8-bit weights, as quantized_linear takes one, as one operation "
        "with an output each, computed by nextterm_linear_several's kind of function at the address `product`.");
}
