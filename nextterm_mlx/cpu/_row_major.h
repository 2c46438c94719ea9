/*
 * A primitive's inputs as row-major blocks, taken in eval_cpu: each input
 * itself when it already is one (weights always are, activations nearly
 * always), else a copy the encoder keeps until the dispatched work has run.
 * Making them contiguous here rather than with mx::contiguous when the graph
 * is built spares every forward pass a Contiguous node per input, which the
 * host builds and schedules even when it copies nothing. (MLX's own CPU copy
 * is not among libmlx's exported symbols, hence the plain loop below.)
 */
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include "mlx/backend/cpu/encoder.h"
#include "mlx/mlx.h"

namespace nextterm {

/* The elements of a strided array, in row-major order, into `out`. */
inline void copy_row_major(const char *in, char *out, const mlx::core::Shape &shape,
                           const mlx::core::Strides &strides, size_t item) {
  size_t count = 1;
  for (int extent : shape) count *= extent;
  std::vector<int> index(shape.size(), 0);
  for (size_t i = 0; i < count; ++i) {
    int64_t offset = 0;
    for (size_t d = 0; d < shape.size(); ++d) offset += index[d] * strides[d];
    std::memcpy(out + i * item, in + offset * item, item);
    for (size_t d = shape.size(); d-- > 0 && ++index[d] == shape[d];) index[d] = 0;
  }
}

inline std::vector<mlx::core::array> row_major(const std::vector<mlx::core::array> &inputs,
                                               mlx::core::cpu::CommandEncoder &encoder) {
  std::vector<mlx::core::array> rows;
  for (const mlx::core::array &input : inputs) {
    if (input.flags().row_contiguous) {
      rows.push_back(input);
      continue;
    }
    mlx::core::array copy(input.shape(), input.dtype(), nullptr, {});
    copy.set_data(mlx::core::allocator::malloc(copy.nbytes()));
    encoder.add_temporary(input);
    encoder.add_temporary(copy);
    encoder.dispatch([in = input.data<char>(), out = copy.data<char>(), shape = input.shape(),
                      strides = input.strides(), item = input.itemsize()]() {
      copy_row_major(in, out, shape, strides, item);
    });
    rows.push_back(copy);
  }
  return rows;
}

}  // namespace nextterm
