"""The Linux-CPU path: what makes MLX's CPU backend fast enough on Linux.

- blas.py: OpenBLAS and the skinny-product kernel (_skinny.c), loaded privately;
- kernels.py: the model's operations routed through them and through the
  primitives (_primitives.cpp: a Linear layer's product, SwiGLU, attention);
- two_streams.py: what the primitives do not take, halved over two threads;
- heap.py: glibc's malloc kept from returning freed memory (the CLI's choice),
  and made to return it (the server's, when idle).

Nothing here acts on import: the loader builds CPUKernels for a model that
runs on a Linux CPU (nextterm_mlx/loading.py), from the switches in
nextterm_mlx/settings.py. macOS never imports it.
"""
