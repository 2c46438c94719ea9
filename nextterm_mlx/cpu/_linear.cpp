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
 */

#include <cstdint>
#include <stdexcept>
#include <vector>

#include <nanobind/nanobind.h>

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
    mx::Stream s = stream();
    std::vector<mx::array> grads;
    for (int arg : argnums) {
      if (arg == 0) {
        grads.push_back(mx::matmul(cotangent, mx::astype(weight, mx::float32, s), s));
      } else {
        int depth = x.shape(-1), outputs_per_row = weight.shape(0);
        mx::array rows_of_x = mx::reshape(x, {-1, depth}, s);
        mx::array rows_of_cotangent = mx::reshape(cotangent, {-1, outputs_per_row}, s);
        grads.push_back(mx::astype(mx::matmul(mx::transpose(rows_of_cotangent, s), rows_of_x, s), weight.dtype(), s));
      }
    }
    return grads;
  }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array> &inputs) override {
    mx::Shape shape = inputs[0].shape();
    shape.back() = inputs[1].shape(0);
    return {shape};
  }

  const char *name() const override { return "Linear"; }
  bool is_equivalent(const mx::Primitive &other) const override {
    return product_ == static_cast<const Linear &>(other).product_;
  }

 private:
  uintptr_t product_;
};

/* An 8-bit weight: uint32 words of four bytes, (outputs, depth / 4), with float32 scales and biases
 * (outputs, depth / 64). */
mx::array quantized_linear(const mx::array &x, const mx::array &weight, const mx::array &scales,
                           const mx::array &biases, uintptr_t product) {
  if (product == 0) throw std::invalid_argument("[linear] needs the address of a product function");
  int outputs = weight.ndim() == 2 ? weight.shape(0) : 0, depth = weight.ndim() == 2 ? 4 * weight.shape(1) : 0;
  bool groups_fit = depth > 0 && depth % 64 == 0 && scales.shape() == mx::Shape{outputs, depth / 64} &&
                    biases.shape() == scales.shape();
  if (x.dtype() != mx::float32 || weight.dtype() != mx::uint32 || scales.dtype() != mx::float32 ||
      biases.dtype() != mx::float32 || x.ndim() < 1 || x.shape(-1) != depth || x.size() == 0 || !groups_fit)
    throw std::invalid_argument("[linear] takes float32 x (..., depth), a uint32 weight (outputs, depth / 4) "
                                "and float32 scales and biases (outputs, depth / 64)");
  mx::Stream stream = mx::default_stream(mx::Device::cpu);
  mx::Shape shape = x.shape();
  shape.back() = outputs;
  return mx::array(shape, mx::float32, std::make_shared<Linear>(stream, product),
                   std::vector<mx::array>{x, weight, scales, biases});
}

mx::array linear(const mx::array &x, const mx::array &weight, uintptr_t product) {
  if (product == 0) throw std::invalid_argument("[linear] needs the address of a product function");
  bool weight_dtype = weight.dtype() == mx::float32 || weight.dtype() == mx::bfloat16;
  if (x.dtype() != mx::float32 || !weight_dtype || weight.ndim() != 2 || x.ndim() < 1 ||
      x.shape(-1) != weight.shape(1) || x.size() == 0 || weight.size() == 0)
    throw std::invalid_argument("[linear] takes float32 x (..., depth) and a float32 or bfloat16 weight "
                                "(outputs, depth)");
  mx::Stream stream = mx::default_stream(mx::Device::cpu);
  mx::Shape shape = x.shape();
  shape.back() = weight.shape(0);
  return mx::array(shape, mx::float32, std::make_shared<Linear>(stream, product), std::vector<mx::array>{x, weight});
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
}
