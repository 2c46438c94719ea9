/*
 * The Python module of nextterm-mlx's MLX primitives for the CPU (see
 * nextterm_mlx/cpu/kernels.py): a Linear layer's product (_linear.cpp),
 * RMSNorm (_rms_norm.cpp), SwiGLU (_swiglu.cpp) and attention (_attention.cpp). It is built against the headers of one MLX version,
 * which it reports, and in the nanobind domain of MLX's own bindings
 * ("mlx"), so that its functions take and return mx.array.
 */

#include <nanobind/nanobind.h>

#include "mlx/version.h"
#ifndef NEXTTERM_LINEAR_ONLY
#include "_vector_exp.h"
#endif

namespace nb = nanobind;

void bind_linear(nb::module_ &m);
void bind_rms_norm(nb::module_ &m);
void bind_swiglu(nb::module_ &m);
void bind_attention(nb::module_ &m);

NB_MODULE(_primitives, m) {
  m.attr("built_against") = NB_TOSTRING(MLX_VERSION_MAJOR) "." NB_TOSTRING(MLX_VERSION_MINOR) "." NB_TOSTRING(
      MLX_VERSION_PATCH);
  bind_linear(m);
#ifdef NEXTTERM_LINEAR_ONLY  // not x86-64: RMSNorm, SwiGLU and attention are not built
  m.attr("vectorised") = false;
#else
  // Whether this CPU has the AVX2 and FMA that SwiGLU and attention are written for.
  m.attr("vectorised") = has_avx2_and_fma();
  bind_rms_norm(m);
  bind_swiglu(m);
  bind_attention(m);
#endif
}
