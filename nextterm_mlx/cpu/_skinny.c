/*
 * Skinny matrix products for the model's Linear layers on a Linux CPU: a few
 * rows times a weight matrix.
 *
 * Decoding multiplies one token (or a few: a small batch, or drafted tokens
 * to verify) by each weight matrix, and OpenBLAS 0.3.21 (Debian 12's) still
 * packs the weights into GEMM panels for that: it reads them at a fraction of
 * the memory bandwidth, whether there are 1 or 8 rows. Such a product only has to
 * stream the weights once: a Linear layer on 1 to 64 rows goes to the kernel
 * below, which does that with every core. One vector times a small matrix
 * (the 16-row output head) is computed on the calling thread, where waking
 * the workers would cost more than the product.
 *
 * nextterm_mlx/cpu/blas.py loads this library and OpenBLAS privately (no
 * symbol of either enters the process's global scope) and hands over
 * OpenBLAS's sgemm and sgemv for what the kernel does not compute itself;
 * cblas_sgemm below is a drop-in for OpenBLAS's, and the Linear primitive
 * (_linear.cpp) calls it by address. It is built as a Python extension only
 * so that pip compiles it; Python never imports it (it has no module init),
 * ctypes loads it.
 */

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* CBLAS's enum values, so this file needs no cblas.h. */
enum { ROW_MAJOR = 101, NO_TRANS = 111, TRANS = 112 };

/* Products with up to this many rows take the kernel; beyond it, reusing
 * each weight for many rows is what matters, and OpenBLAS's GEMM does that
 * (docs/cpu.md has the measurements behind this file's constants). */
#define MAX_ROWS 64
#define MAX_THREADS 64

typedef void (*sgemm_fn)(int order, int trans_a, int trans_b, int m, int n, int k,
                         float alpha, const float *a, int lda, const float *b, int ldb,
                         float beta, float *c, int ldc);
typedef void (*sgemv_fn)(int order, int trans, int m, int n, float alpha,
                         const float *a, int lda, const float *x, int incx,
                         float beta, float *y, int incy);

static sgemm_fn blas_sgemm;
static sgemv_fn blas_sgemv;
static atomic_ulong skinny_calls, vector_calls, gemv_calls, read_aheads;

/* How many products this library took, how many of those it computed on the
 * calling thread as one small vector-matrix product, how many it handed to
 * OpenBLAS's sgemv, and up to how many rows the kernel takes: lets tests and
 * `info` see it work. */
unsigned long nextterm_skinny_calls(void) { return atomic_load(&skinny_calls); }
unsigned long nextterm_skinny_vector_calls(void) { return atomic_load(&vector_calls); }
unsigned long nextterm_skinny_gemv_calls(void) { return atomic_load(&gemv_calls); }
/* How many times a worker knew the next product and started fetching its weights. */
unsigned long nextterm_skinny_read_aheads(void) { return atomic_load(&read_aheads); }
int nextterm_skinny_max_rows(void) { return MAX_ROWS; }

/* --- the kernel: c[m, n] = alpha * dot(a[m, :], w[n, :]) + beta * c[m, n] -------------- */

/* The weights' element type: float32, or bfloat16 (how a model's weights
 * are stored), widened to float32 as it is loaded. Widening is exact and
 * every kernel multiplies and adds in the same order for both, so a
 * bfloat16 product gives bit for bit the float32 product of the widened
 * weights, while reading half the bytes. */
enum { F32, BF16, Q8 };

typedef struct {
  const float *a;
  const void *w; /* of `type` */
  float *c;
  int rows, cols, depth; /* m, n, k */
  int lda, ldw, ldc;
  float alpha, beta;
  int type;
  /* Q8 only: each group's scale and bias, by weight row; each group's sum of
   * a, by input row */
  const float *scales, *biases, *group_sums;
  /* When not NULL, the threads do not multiply: they widen their share of
   * the weight rows to float32 here (ldw floats a row), for OpenBLAS. */
  float *widened;
} Product;

typedef float v8 __attribute__((vector_size(32)));
typedef unsigned short u16x8 __attribute__((vector_size(16)));
typedef unsigned short u16x16 __attribute__((vector_size(32)));

/* Weight rows and input rows per micro-kernel step (12 accumulators, 7
 * loads per 12 multiply-adds), and the depth of a chunk: the block's
 * weights for one chunk (3 KB) stay in L1 while every input row passes, and
 * so do the chunks of up to CHUNKED_ROWS input rows. Beyond that the input
 * rows' chunks fill L1 anyway, and a block goes through its whole depth in
 * one pass: the weight rows stay in L1 and the input rows stream from L2,
 * with no partial sums to store and reload at every chunk. */
#define WEIGHT_BLOCK 3
#define INPUT_BLOCK 4
#define CHUNK 256
#define CHUNKED_ROWS 16

/* How many blocks ahead the kernel prefetches the weights. A weight row of
 * the 440M model is 1024 floats, one 4 KB page, and the hardware prefetcher
 * does not cross pages, so it starts over at every row. Prefetching the rows
 * two blocks ahead into L2 beats the next chunk into L1; into L1 at the same
 * distance gains nothing, and further ahead no more than two. */
#define PREFETCH_BLOCKS 2

#define INLINE static inline __attribute__((always_inline))

/* An unaligned load of a vector type. A macro, not a function: a function
 * returning a vector would have a different ABI in each kernel. */
#define load_as(type, p)                  \
  ({                                      \
    type loaded_;                         \
    memcpy(&loaded_, (p), sizeof loaded_); \
    loaded_;                              \
  })
#define load8(p) load_as(v8, p)

/* A bfloat16 is the upper half of the float32 of the same value: each goes
 * after a zero half. (Interleaving takes GCC fewer instructions than
 * converting to 32-bit integers and shifting.) */
#define widen8(p)                                                                            \
  ((v8)__builtin_shufflevector((u16x8){0}, load_as(u16x8, p), 0, 8, 1, 9, 2, 10, 3, 11, 4, 12, \
                               5, 13, 6, 14, 7, 15))

/* Eight weights from element k of the row w, as float32. */
#define load_weights8(w, k, type) \
  ((type) == BF16 ? widen8((const uint16_t *)(w) + (k)) : load8((const float *)(w) + (k)))

/* The same for sixteen, the vectors of the AVX-512 kernels. */
typedef float v16 __attribute__((vector_size(64)));
typedef unsigned int u32x16 __attribute__((vector_size(64)));
#define load16(p) load_as(v16, p)
#define widen16(p) ((v16)(__builtin_convertvector(load_as(u16x16, p), u32x16) << 16))
#define load_weights16(w, k, type) \
  ((type) == BF16 ? widen16((const uint16_t *)(w) + (k)) : load16((const float *)(w) + (k)))

INLINE size_t element_size(int type) {
  return type == Q8 ? sizeof(uint8_t) : type == BF16 ? sizeof(uint16_t) : sizeof(float);
}

/* Elements per cache line of 64 bytes, the unit the kernels prefetch in. */
INLINE int line_elements(int type) { return 64 / (int)element_size(type); }

INLINE const void *element(const void *row, size_t k, int type) {
  return (const char *)row + k * element_size(type);
}

INLINE const void *weight_row(const Product *p, int n, int type) {
  return element(p->w, (size_t)n * p->ldw, type);
}

INLINE float weight_at(const void *row, int k, int type) {
  if (type == F32) return ((const float *)row)[k];
  uint32_t bits = (uint32_t)((const uint16_t *)row)[k] << 16;
  float value;
  memcpy(&value, &bits, sizeof value);
  return value;
}

INLINE float sum8(const v8 *v) {
  return (((*v)[0] + (*v)[4]) + ((*v)[1] + (*v)[5])) + (((*v)[2] + (*v)[6]) + ((*v)[3] + (*v)[7]));
}

INLINE float sum16(const v16 *v) {
  return ((((*v)[0] + (*v)[8]) + ((*v)[1] + (*v)[9])) + (((*v)[2] + (*v)[10]) + ((*v)[3] + (*v)[11]))) +
         ((((*v)[4] + (*v)[12]) + ((*v)[5] + (*v)[13])) + (((*v)[6] + (*v)[14]) + ((*v)[7] + (*v)[15])));
}

INLINE void store(const Product *p, int m, int n, float dot) {
  float *out = p->c + (size_t)m * p->ldc + n;
  *out = p->beta == 0.0f ? p->alpha * dot : p->alpha * dot + p->beta * *out;
}

/* Stores output (m, n) from the sum of its vectorised depths, adding the
 * depths from `vector_depth` on, which no vector covered, one at a time. */
INLINE float tail_sum(const float *a, const float *w, int count, float total) {
  for (int k = 0; k < count; ++k) total += a[k] * w[k];
  return total;
}

/* total plus the products of depths [from, to), fewer than 16, one at a
 * time. bfloat16 weights are widened first, so that both types run the very
 * same loop: the compiler may fuse or vectorise its multiplies and adds, and
 * must do it alike for both. */
INLINE float add_tail(const float *a, const void *w, int from, int to, float total, int type) {
  if (type == F32) return tail_sum(a + from, (const float *)w + from, to - from, total);
  float widened[16];
  for (int k = from; k < to; ++k) widened[k - from] = weight_at(w, k, type);
  return tail_sum(a + from, widened, to - from, total);
}

INLINE void store_with_tail(const Product *p, int m, int n, float total, int vector_depth, int type) {
  total = add_tail(p->a + (size_t)m * p->lda, weight_row(p, n, type), vector_depth, p->depth, total, type);
  store(p, m, n, total);
}

/* Adds one chunk of depth [from, to) (a multiple of 8) to the sums of
 * INPUT_BLOCK input rows against WEIGHT_BLOCK weight rows. Unless `ahead` is
 * NULL, it also asks for the same depths of the rows `ahead` points to, one
 * cache line of each row per 16 floats, into L2 (see PREFETCH_BLOCKS). */
INLINE void chunk_block(const float *const a[INPUT_BLOCK], const void *const w[WEIGHT_BLOCK],
                        int from, int to, v8 sums[INPUT_BLOCK][WEIGHT_BLOCK],
                        const void *const ahead[WEIGHT_BLOCK], int type) {
  v8 s00 = sums[0][0], s01 = sums[0][1], s02 = sums[0][2];
  v8 s10 = sums[1][0], s11 = sums[1][1], s12 = sums[1][2];
  v8 s20 = sums[2][0], s21 = sums[2][1], s22 = sums[2][2];
  v8 s30 = sums[3][0], s31 = sums[3][1], s32 = sums[3][2];
  for (int k = from; k < to; k += 8) {
    if (ahead != NULL && (k - from) % line_elements(type) == 0)
      for (int j = 0; j < WEIGHT_BLOCK; ++j) __builtin_prefetch(element(ahead[j], k - from, type), 0, 2);
    v8 w0 = load_weights8(w[0], k, type), w1 = load_weights8(w[1], k, type),
       w2 = load_weights8(w[2], k, type);
    v8 x = load8(a[0] + k);
    s00 += x * w0, s01 += x * w1, s02 += x * w2;
    x = load8(a[1] + k);
    s10 += x * w0, s11 += x * w1, s12 += x * w2;
    x = load8(a[2] + k);
    s20 += x * w0, s21 += x * w1, s22 += x * w2;
    x = load8(a[3] + k);
    s30 += x * w0, s31 += x * w1, s32 += x * w2;
  }
  sums[0][0] = s00, sums[0][1] = s01, sums[0][2] = s02;
  sums[1][0] = s10, sums[1][1] = s11, sums[1][2] = s12;
  sums[2][0] = s20, sums[2][1] = s21, sums[2][2] = s22;
  sums[3][0] = s30, sums[3][1] = s31, sums[3][2] = s32;
}

/* How the float32 one-row kernel (rows_in_turn_body) reads ahead. The
 * hardware prefetcher streams a row once it is being read, but does not
 * cross into the next page, where each row of the 440M model starts: while
 * the kernel reads a weight row, it asks for a line of the row ROWS_AHEAD
 * further on every PREFETCH_SPACING lines, and that row is on its way
 * before it is read. */
#define ROWS_AHEAD 4
#define PREFETCH_SPACING 16

/* One output of a product, its depths summed in the order every kernel of
 * eight-float vectors sums them, so that an output is the same number
 * whichever kernel computes it: eight running sums over the depth, added up
 * by sum8, then the depths past the last whole vector one at a time. Unless
 * `ahead` is NULL, it also asks for that row as PREFETCH_SPACING says. */
INLINE float dot(const float *a, const void *w, const void *ahead, int depth, int type) {
  v8 sum = {0};
  int k = 0;
  for (; k + 8 <= depth; k += 8) {
    if (ahead != NULL && k % (PREFETCH_SPACING * line_elements(type)) == 0)
      __builtin_prefetch(element(ahead, k, type), 0, 2);
    sum += load8(a + k) * load_weights8(w, k, type);
  }
  return add_tail(a, w, k, depth, sum8(&sum), type);
}

/* The same with sixteen running sums, the order of the AVX-512 kernels. */
INLINE float dot16(const float *a, const void *w, const void *ahead, int depth, int type) {
  v16 sum = {0};
  int k = 0;
  for (; k + 16 <= depth; k += 16) {
    if (ahead != NULL && k % (PREFETCH_SPACING * line_elements(type)) == 0)
      __builtin_prefetch(element(ahead, k, type), 0, 2);
    sum += load16(a + k) * load_weights16(w, k, type);
  }
  return add_tail(a, w, k, depth, sum16(&sum), type);
}

/* Weight rows per step of the one-row kernel for bfloat16 weights. */
#define ROW_BLOCK 4

/* columns_body for one input row (a decode step of one sequence) of
 * bfloat16 weights (float32 ones take rows_in_turn_body below): a dot
 * product per output, the input row in L1, the weight rows PREFETCH_BLOCKS
 * blocks ahead prefetched into L2, as in the multi-row kernel: it streams
 * the weights faster than OpenBLAS's sgemv. */
INLINE void one_row_body(const Product *p, int first, int last, int type) {
  const float *x = p->a;
  int vector_depth = p->depth / 8 * 8;
  int n = first;
  for (; n + ROW_BLOCK <= last; n += ROW_BLOCK) {
    const void *w0 = weight_row(p, n, type), *w1 = weight_row(p, n + 1, type),
               *w2 = weight_row(p, n + 2, type), *w3 = weight_row(p, n + 3, type);
    int has_ahead = n + (PREFETCH_BLOCKS + 1) * ROW_BLOCK <= last;
    int ahead = n + PREFETCH_BLOCKS * ROW_BLOCK;
    v8 s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};
    for (int k = 0; k < vector_depth; k += 8) {
      if (has_ahead && k % line_elements(type) == 0)
        for (int j = 0; j < ROW_BLOCK; ++j)
          __builtin_prefetch(element(weight_row(p, ahead + j, type), k, type), 0, 2);
      v8 xv = load8(x + k);
      s0 += xv * load_weights8(w0, k, type), s1 += xv * load_weights8(w1, k, type);
      s2 += xv * load_weights8(w2, k, type), s3 += xv * load_weights8(w3, k, type);
    }
    float totals[ROW_BLOCK] = {sum8(&s0), sum8(&s1), sum8(&s2), sum8(&s3)};
    for (int j = 0; j < ROW_BLOCK; ++j) store_with_tail(p, 0, n + j, totals[j], vector_depth, type);
  }
  for (; n < last; ++n) store(p, 0, n, dot(x, weight_row(p, n, type), NULL, p->depth, type));
}

/* Output columns [first, last) for every input row. Each block of weight
 * rows is read from memory once, chunk by chunk; the input rows (a few KB
 * each) come from cache. A last group of fewer than INPUT_BLOCK input rows
 * repeats its first row in the empty places and discards those sums. */
INLINE void columns_body(const Product *p, int first, int last, int type) {
  if (p->rows == 1) {
    one_row_body(p, first, last, type);
    return;
  }
  int vector_depth = p->depth / 8 * 8;
  int chunk = p->rows <= CHUNKED_ROWS ? CHUNK : vector_depth;
  int n = first;
  for (; n + WEIGHT_BLOCK <= last; n += WEIGHT_BLOCK) {
    const void *w[WEIGHT_BLOCK];
    for (int j = 0; j < WEIGHT_BLOCK; ++j) w[j] = weight_row(p, n + j, type);
    v8 sums[MAX_ROWS / INPUT_BLOCK][INPUT_BLOCK][WEIGHT_BLOCK];
    memset(sums, 0, sizeof sums[0] * (size_t)((p->rows + INPUT_BLOCK - 1) / INPUT_BLOCK));
    for (int from = 0; from < vector_depth; from += chunk) {
      int to = from + chunk < vector_depth ? from + chunk : vector_depth;
      const void *ahead[WEIGHT_BLOCK];
      int has_ahead = n + (PREFETCH_BLOCKS + 1) * WEIGHT_BLOCK <= last;
      for (int j = 0; j < WEIGHT_BLOCK; ++j)
        ahead[j] = element(weight_row(p, n + PREFETCH_BLOCKS * WEIGHT_BLOCK + j, type), from, type);
      for (int m = 0; m < p->rows; m += INPUT_BLOCK) {
        const float *a[INPUT_BLOCK];
        for (int i = 0; i < INPUT_BLOCK; ++i)
          a[i] = p->a + (size_t)(m + i < p->rows ? m + i : m) * p->lda;
        chunk_block(a, w, from, to, sums[m / INPUT_BLOCK], m == 0 && has_ahead ? ahead : NULL, type);
      }
    }
    for (int m = 0; m < p->rows; ++m)
      for (int j = 0; j < WEIGHT_BLOCK; ++j)
        store_with_tail(p, m, n + j, sum8(&sums[m / INPUT_BLOCK][m % INPUT_BLOCK][j]), vector_depth,
                        type);
  }
  for (; n < last; ++n)
    for (int m = 0; m < p->rows; ++m)
      store(p, m, n, dot(p->a + (size_t)m * p->lda, weight_row(p, n, type), NULL, p->depth, type));
}

/* A kernel for each weight type, from one body: `type` is a constant in each. */
#define FOR_EACH_TYPE(body, p, first, last) \
  ((p)->type == BF16 ? body(p, first, last, BF16) : body(p, first, last, F32))

#if defined(__x86_64__)
__attribute__((target("avx2,fma"))) static void columns_avx2(const Product *p, int first,
                                                             int last) {
  FOR_EACH_TYPE(columns_body, p, first, last);
}

/* --- AVX-512: several input rows against six weight rows at a time --------------------- */

/* With 32 vector registers of 16 floats, a step multiplies 4 input rows by 6
 * weight rows (24 sums, 10 loads per 24 multiply-adds against 7 per 12 with
 * AVX2): the products of a batch are bound by the arithmetic, not by memory.
 * The weights' chunk (6 rows of WIDE_CHUNK floats, 12 KB) stays in L1 while
 * every group of input rows passes. The rows PREFETCH_BLOCKS blocks ahead are
 * asked into L2 a few lines per step, spread over all the groups, rather
 * than in one burst during the first group. A one-row product is bound by
 * memory and keeps the one-row kernel's loop, with this kernel's sums. */
#define WIDE_INPUTS 4
#define WIDE_WEIGHTS 6
#define WIDE_CHUNK 512

/* Adds depths [from, to) (a multiple of 16) to the sums of WIDE_INPUTS input
 * rows against WIDE_WEIGHTS weight rows (starting them at 0 when `from` is),
 * and asks for lines [line, end_line)
 * of the rows `ahead` points to (line l: row l % WIDE_WEIGHTS, bytes from
 * 64 * (l / WIDE_WEIGHTS) on), evenly over its steps. */
INLINE void wide_block(const float *const a[WIDE_INPUTS], const void *const w[WIDE_WEIGHTS],
                       int from, int to, v16 sums[WIDE_INPUTS][WIDE_WEIGHTS],
                       const void *const ahead[WIDE_WEIGHTS], int line, int end_line, int type) {
  v16 s[WIDE_INPUTS][WIDE_WEIGHTS];
  for (int i = 0; i < WIDE_INPUTS; ++i)
    for (int j = 0; j < WIDE_WEIGHTS; ++j) s[i][j] = from == 0 ? (v16){0} : sums[i][j];
  int steps = (to - from) / 16;
  int lines_per_step = steps > 0 ? (end_line - line + steps - 1) / steps : 0;
  for (int k = from; k < to; k += 16) {
    for (int asked = 0; asked < lines_per_step && line < end_line; ++asked, ++line)
      __builtin_prefetch((const char *)ahead[line % WIDE_WEIGHTS] + line / WIDE_WEIGHTS * 64, 0, 2);
    v16 weights[WIDE_WEIGHTS];
    for (int j = 0; j < WIDE_WEIGHTS; ++j) weights[j] = load_weights16(w[j], k, type);
    for (int i = 0; i < WIDE_INPUTS; ++i) {
      v16 x = load16(a[i] + k);
      for (int j = 0; j < WIDE_WEIGHTS; ++j) s[i][j] += x * weights[j];
    }
  }
  for (int i = 0; i < WIDE_INPUTS; ++i)
    for (int j = 0; j < WIDE_WEIGHTS; ++j) sums[i][j] = s[i][j];
}

/* columns_body for AVX-512, two rows or more. A last block of fewer than
 * WIDE_WEIGHTS weight rows, like a last group of fewer than WIDE_INPUTS input
 * rows, repeats its first row in the empty places and discards those sums. */
INLINE void wide_body(const Product *p, int first, int last, int type) {
  int vector_depth = p->depth / 16 * 16;
  int groups = (p->rows + WIDE_INPUTS - 1) / WIDE_INPUTS;
  for (int n = first; n < last; n += WIDE_WEIGHTS) {
    int width = last - n < WIDE_WEIGHTS ? last - n : WIDE_WEIGHTS;
    const void *w[WIDE_WEIGHTS];
    for (int j = 0; j < WIDE_WEIGHTS; ++j) w[j] = weight_row(p, n + (j < width ? j : 0), type);
    v16 sums[MAX_ROWS / WIDE_INPUTS][WIDE_INPUTS][WIDE_WEIGHTS];
    int has_ahead = n + (PREFETCH_BLOCKS + 1) * WIDE_WEIGHTS <= last;
    /* At least one pass, which starts the sums, when the depth is below one vector. */
    for (int from = 0; from == 0 || from < vector_depth; from += WIDE_CHUNK) {
      int to = from + WIDE_CHUNK < vector_depth ? from + WIDE_CHUNK : vector_depth;
      const void *ahead[WIDE_WEIGHTS];
      for (int j = 0; j < WIDE_WEIGHTS; ++j)
        ahead[j] = element(w[j], (size_t)PREFETCH_BLOCKS * WIDE_WEIGHTS * p->ldw + from, type);
      int lines = has_ahead ? (to - from) / line_elements(type) * WIDE_WEIGHTS : 0;
      for (int group = 0; group < groups; ++group) {
        const float *a[WIDE_INPUTS];
        for (int i = 0; i < WIDE_INPUTS; ++i) {
          int m = group * WIDE_INPUTS + i;
          a[i] = p->a + (size_t)(m < p->rows ? m : group * WIDE_INPUTS) * p->lda;
        }
        wide_block(a, w, from, to, sums[group], ahead, (int)((long)lines * group / groups),
                   (int)((long)lines * (group + 1) / groups), type);
      }
    }
    for (int m = 0; m < p->rows; ++m)
      for (int j = 0; j < width; ++j)
        store_with_tail(p, m, n + j, sum16(&sums[m / WIDE_INPUTS][m % WIDE_INPUTS][j]), vector_depth,
                        type);
  }
}

/* one_row_body with sixteen-float sums, added up as wide_body adds up its
 * own: a row's outputs are then the same numbers alone as in a batch, and a
 * sequence decodes alike by itself and among others. */
INLINE void one_row_wide_body(const Product *p, int first, int last, int type) {
  const float *x = p->a;
  int vector_depth = p->depth / 16 * 16;
  int n = first;
  for (; n + ROW_BLOCK <= last; n += ROW_BLOCK) {
    const void *w0 = weight_row(p, n, type), *w1 = weight_row(p, n + 1, type),
               *w2 = weight_row(p, n + 2, type), *w3 = weight_row(p, n + 3, type);
    int has_ahead = n + (PREFETCH_BLOCKS + 1) * ROW_BLOCK <= last;
    int ahead = n + PREFETCH_BLOCKS * ROW_BLOCK;
    v16 s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};
    for (int k = 0; k < vector_depth; k += 16) {
      if (has_ahead && k % line_elements(type) == 0)
        for (int j = 0; j < ROW_BLOCK; ++j)
          __builtin_prefetch(element(weight_row(p, ahead + j, type), k, type), 0, 2);
      v16 xv = load16(x + k);
      s0 += xv * load_weights16(w0, k, type), s1 += xv * load_weights16(w1, k, type);
      s2 += xv * load_weights16(w2, k, type), s3 += xv * load_weights16(w3, k, type);
    }
    float totals[ROW_BLOCK] = {sum16(&s0), sum16(&s1), sum16(&s2), sum16(&s3)};
    for (int j = 0; j < ROW_BLOCK; ++j) store_with_tail(p, 0, n + j, totals[j], vector_depth, type);
  }
  for (; n < last; ++n) store(p, 0, n, dot16(x, weight_row(p, n, type), NULL, p->depth, type));
}

INLINE void avx512_body(const Product *p, int first, int last, int type) {
  if (p->rows == 1)
    one_row_wide_body(p, first, last, type);
  else
    wide_body(p, first, last, type);
}

__attribute__((target("avx512f,avx2,fma"))) static void columns_avx512(const Product *p, int first,
                                                                       int last) {
  FOR_EACH_TYPE(avx512_body, p, first, last);
}
#endif

static void columns_generic(const Product *p, int first, int last) {
  FOR_EACH_TYPE(columns_body, p, first, last);
}

static void (*columns)(const Product *, int, int) = columns_generic;

/* --- one row of float32 weights: the weight rows in turn ------------------------------- */

/* A one-row product of float32 weights is bound by memory, and reading its
 * weight rows one after another, each front to back, lets the hardware
 * prefetcher stream them; rows read side by side, as the kernels above read
 * them, come from memory more slowly. One chain of multiply-adds a row
 * keeps up with memory for float32 weights. Bfloat16 ones, widened as they
 * are loaded, need the kernels above's four chains, and stay there. Each
 * output sums in the kernels above's order, so the numbers are theirs.
 * These are functions of their own: inlined into the kernels above, the
 * loop made the compiler spill a register in their bfloat16 loop. */
INLINE void rows_in_turn_body(const Product *p, int first, int last, int lanes) {
  for (int n = first; n < last; ++n) {
    const float *w = weight_row(p, n, F32);
    const void *ahead = n + ROWS_AHEAD < last ? weight_row(p, n + ROWS_AHEAD, F32) : NULL;
    store(p, 0, n, lanes == 16 ? dot16(p->a, w, ahead, p->depth, F32) : dot(p->a, w, ahead, p->depth, F32));
  }
}

#if defined(__x86_64__)
__attribute__((target("avx2,fma"))) static void rows_in_turn_avx2(const Product *p, int first,
                                                                  int last) {
  rows_in_turn_body(p, first, last, 8);
}

__attribute__((target("avx512f,avx2,fma"))) static void rows_in_turn_avx512(const Product *p,
                                                                            int first, int last) {
  rows_in_turn_body(p, first, last, 16);
}
#endif

static void rows_in_turn_generic(const Product *p, int first, int last) {
  rows_in_turn_body(p, first, last, 8);
}

static void (*rows_in_turn)(const Product *, int, int) = rows_in_turn_generic;

/* --- 8-bit affine weights: w = scale * q + bias for each group of GROUP depths ------------ */

/* mlx-lm's 8-bit format: a byte per weight, a scale and a bias per GROUP
 * consecutive weights of a row. The sum over a group is scale * sum(q * a) +
 * bias * sum(a), so the inner loop widens the bytes to float32 and
 * multiplies them with the input, and the bias costs one multiply-add a
 * group with the group's input sum, computed once per product. The numbers
 * are those of the dequantized weights up to the order of the sums. */
#define GROUP 64

INLINE float q8_output(const Product *p, int m, int n) {
  const float *x = p->a + (size_t)m * p->lda, *sums = p->group_sums + (size_t)m * (p->depth / GROUP);
  const uint8_t *q = (const uint8_t *)p->w + (size_t)n * p->ldw;
  const float *scales = p->scales + (size_t)n * (p->depth / GROUP),
              *biases = p->biases + (size_t)n * (p->depth / GROUP);
  float total = 0.0f;
  for (int g = 0; g < p->depth / GROUP; ++g) {
    float dot = 0.0f;
    for (int k = g * GROUP; k < (g + 1) * GROUP; ++k) dot += x[k] * (float)q[k];
    total += scales[g] * dot + biases[g] * sums[g];
  }
  return total;
}

static void q8_columns_generic(const Product *p, int first, int last) {
  for (int n = first; n < last; ++n)
    for (int m = 0; m < p->rows; ++m) store(p, m, n, q8_output(p, m, n));
}

#if defined(__x86_64__)
#include <immintrin.h>

/* q8 columns with eight lanes: each group of a weight row is widened once,
 * by the instructions made for it (GCC's generic vector conversions of
 * bytes go one element at a time), and multiplied with every input row. */
__attribute__((target("avx2,fma"))) static void q8_columns_avx2(const Product *p, int first, int last) {
  int groups = p->depth / GROUP;
  for (int n = first; n < last; ++n) {
    const uint8_t *q = (const uint8_t *)p->w + (size_t)n * p->ldw;
    const float *scales = p->scales + (size_t)n * groups, *biases = p->biases + (size_t)n * groups;
    __m256 totals[MAX_ROWS];
    float offsets[MAX_ROWS];
    for (int m = 0; m < p->rows; ++m) totals[m] = _mm256_setzero_ps(), offsets[m] = 0.0f;
    for (int g = 0; g < groups; ++g) {
      __m256 w[GROUP / 8];
      for (int i = 0; i < GROUP / 8; ++i)
        w[i] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(q + g * GROUP + 8 * i))));
      __m256 scale = _mm256_set1_ps(scales[g]);
      for (int m = 0; m < p->rows; ++m) {
        const float *x = p->a + (size_t)m * p->lda + g * GROUP;
        __m256 dot0 = _mm256_mul_ps(_mm256_loadu_ps(x), w[0]), dot1 = _mm256_mul_ps(_mm256_loadu_ps(x + 8), w[1]);
        for (int i = 2; i < GROUP / 8; i += 2) {
          dot0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + 8 * i), w[i], dot0);
          dot1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + 8 * i + 8), w[i + 1], dot1);
        }
        totals[m] = _mm256_fmadd_ps(scale, _mm256_add_ps(dot0, dot1), totals[m]);
        offsets[m] += biases[g] * p->group_sums[(size_t)m * groups + g];
      }
    }
    for (int m = 0; m < p->rows; ++m) {
      __m128 half = _mm_add_ps(_mm256_castps256_ps128(totals[m]), _mm256_extractf128_ps(totals[m], 1));
      half = _mm_add_ps(half, _mm_movehl_ps(half, half));
      half = _mm_add_ss(half, _mm_movehdup_ps(half));
      store(p, m, n, _mm_cvtss_f32(half) + offsets[m]);
    }
  }
}

/* q8 columns with sixteen lanes, Q8_ROWS weight rows at a time: a group of
 * each row is widened once and multiplied with every input row, and the
 * input's group is loaded once for all Q8_ROWS. A group of 64 bytes is one
 * cache line, so each step asks for one line of each row PREFETCH_BLOCKS
 * blocks ahead. The groups' biases times the input's group sums are added
 * sixteen groups at a time, lane by lane: summed one by one, they cost a
 * shallow weight's row nearly as much as its products. Each output's sums
 * go in the same order whatever the number of input rows, so a row's
 * outputs are the same numbers alone as in a batch. `rows` is a constant
 * where it is 1, so that a decode step's sums stay in registers. */
#define Q8_ROWS 4

/* Floats [0, count) of `values`, zeros after (count at most 16), not read past count. */
__attribute__((target("avx512f,avx2,fma"))) INLINE __m512 load_up_to_16(const float *values, int count) {
  return _mm512_maskz_loadu_ps((__mmask16)((1u << count) - 1), values);
}

__attribute__((target("avx512f,avx2,fma"))) INLINE void q8_wide_body(const Product *p, int first, int last, int rows) {
  int groups = p->depth / GROUP;
  for (int n = first; n < last; n += Q8_ROWS) {
    int width = last - n < Q8_ROWS ? last - n : Q8_ROWS;
    int has_ahead = n + (PREFETCH_BLOCKS + 1) * Q8_ROWS <= last;
    const uint8_t *q[Q8_ROWS];
    const float *scales[Q8_ROWS], *biases[Q8_ROWS];
    for (int j = 0; j < Q8_ROWS; ++j) {
      int row = n + (j < width ? j : 0);
      q[j] = (const uint8_t *)p->w + (size_t)row * p->ldw;
      scales[j] = p->scales + (size_t)row * groups;
      biases[j] = p->biases + (size_t)row * groups;
    }
    __m512 totals[MAX_ROWS][Q8_ROWS];
    for (int m = 0; m < rows; ++m)
      for (int j = 0; j < Q8_ROWS; ++j) totals[m][j] = _mm512_setzero_ps();
    for (int g = 0; g < groups; ++g) {
      if (has_ahead)
        for (int j = 0; j < Q8_ROWS; ++j)
          __builtin_prefetch(q[j] + (size_t)PREFETCH_BLOCKS * Q8_ROWS * p->ldw + g * GROUP, 0, 2);
      __m512 w[Q8_ROWS][GROUP / 16];
      for (int j = 0; j < Q8_ROWS; ++j)
        for (int i = 0; i < GROUP / 16; ++i)
          w[j][i] = _mm512_cvtepi32_ps(
              _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(q[j] + g * GROUP + 16 * i))));
      for (int m = 0; m < rows; ++m) {
        const float *x = p->a + (size_t)m * p->lda + g * GROUP;
        __m512 x0 = _mm512_loadu_ps(x), x1 = _mm512_loadu_ps(x + 16), x2 = _mm512_loadu_ps(x + 32),
               x3 = _mm512_loadu_ps(x + 48);
        for (int j = 0; j < Q8_ROWS; ++j) {
          __m512 dot = _mm512_mul_ps(x0, w[j][0]);
          dot = _mm512_fmadd_ps(x1, w[j][1], dot);
          dot = _mm512_fmadd_ps(x2, w[j][2], dot);
          dot = _mm512_fmadd_ps(x3, w[j][3], dot);
          totals[m][j] = _mm512_fmadd_ps(_mm512_set1_ps(scales[j][g]), dot, totals[m][j]);
        }
      }
    }
    for (int m = 0; m < rows; ++m) {
      const float *sums = p->group_sums + (size_t)m * groups;
      for (int g = 0; g < groups; g += 16) {
        int count = groups - g < 16 ? groups - g : 16;
        __m512 group_sums = load_up_to_16(sums + g, count);
        for (int j = 0; j < Q8_ROWS; ++j)
          totals[m][j] = _mm512_fmadd_ps(load_up_to_16(biases[j] + g, count), group_sums, totals[m][j]);
      }
      for (int j = 0; j < width; ++j) store(p, m, n + j, _mm512_reduce_add_ps(totals[m][j]));
    }
  }
}

__attribute__((target("avx512f,avx2,fma"))) static void q8_columns_avx512(const Product *p, int first,
                                                                          int last) {
  if (p->rows == 1)
    q8_wide_body(p, first, last, 1);
  else
    q8_wide_body(p, first, last, p->rows);
}
#endif

static void (*q8_columns)(const Product *, int, int) = q8_columns_generic;

/* Weight rows [first, last) of a bfloat16 or 8-bit weight as float32, into p->widened. */
static void widen_rows(const Product *p, int first, int last) {
  int groups = p->depth / GROUP;
  for (int n = first; n < last; ++n) {
    float *out = p->widened + (size_t)n * p->ldw;
    if (p->type == BF16) {
      const uint16_t *row = (const uint16_t *)p->w + (size_t)n * p->ldw;
      for (int k = 0; k < p->depth; ++k) {
        uint32_t bits = (uint32_t)row[k] << 16;
        memcpy(out + k, &bits, sizeof bits);
      }
    } else {
      const uint8_t *q = (const uint8_t *)p->w + (size_t)n * p->ldw;
      const float *scales = p->scales + (size_t)n * groups, *biases = p->biases + (size_t)n * groups;
      for (int k = 0; k < p->depth; ++k) out[k] = scales[k / GROUP] * (float)q[k] + biases[k / GROUP];
    }
  }
}

/* Output columns [first, last) of any product the kernel takes, or the rows
 * to widen of a weight bound for OpenBLAS. */
static void compute(const Product *p, int first, int last) {
  if (p->widened != NULL)
    widen_rows(p, first, last);
  else if (p->type == Q8)
    q8_columns(p, first, last);
  else if (p->type == F32 && p->rows == 1)
    rows_in_turn(p, first, last);
  else
    columns(p, first, last);
}

/* --- one vector times a small matrix, on the calling thread ---------------------------- */

/* Products of at most this many multiply-adds are computed here, on one
 * thread. Decoding a batch multiplies each head's query by its cached keys,
 * then its attention weights by its cached values, one head at a time: tens
 * of thousands of products of a few thousand multiply-adds per step. OpenBLAS
 * splits each of those between its threads, and its idle thread then spins
 * on sched_yield, taking a core from the kernel's workers. */
#define SMALL_PRODUCT 65536

/* Outputs computed in one pass over the matrix: their sums stay in L1, and
 * an untransposed matrix is read in runs of 64 floats. */
#define COLUMN_BLOCK 64

/* out[j * stride] = alpha * sum_l x[l] * M(l, j) + beta * out[j * stride] for
 * j < count, where M(l, j) is matrix[j * ld + l] when `rows_are_columns` (the
 * matrix is stored transposed: a dot product per output) and matrix[l * ld + j]
 * otherwise (each x[l] scales a contiguous row). x is contiguous. */
INLINE void vector_body(const float *x, int depth, const float *matrix, int ld,
                        int rows_are_columns, int count, float alpha, float beta, float *out,
                        int stride, int lanes) {
  for (int first = 0; first < count; first += COLUMN_BLOCK) {
    int width = count - first < COLUMN_BLOCK ? count - first : COLUMN_BLOCK;
    float sums[COLUMN_BLOCK];
    if (rows_are_columns) {
      for (int j = 0; j < width; ++j) {
        const float *column = matrix + (size_t)(first + j) * ld;
        sums[j] = lanes == 16 ? dot16(x, column, NULL, depth, F32) : dot(x, column, NULL, depth, F32);
      }
    } else {
      for (int j = 0; j < width; ++j) sums[j] = 0.0f;
      for (int l = 0; l < depth; ++l) {
        const float *row = matrix + (size_t)l * ld + first;
        for (int j = 0; j < width; ++j) sums[j] += x[l] * row[j];
      }
    }
    for (int j = 0; j < width; ++j) {
      float *y = out + (size_t)(first + j) * stride;
      *y = beta == 0.0f ? alpha * sums[j] : alpha * sums[j] + beta * *y;
    }
  }
}

typedef void (*vector_fn)(const float *, int, const float *, int, int, int, float, float,
                          float *, int);

#if defined(__x86_64__)
__attribute__((target("avx2,fma"))) static void vector_avx2(const float *x, int depth,
                                                            const float *matrix, int ld,
                                                            int rows_are_columns, int count,
                                                            float alpha, float beta,
                                                            float *out, int stride) {
  vector_body(x, depth, matrix, ld, rows_are_columns, count, alpha, beta, out, stride, 8);
}

__attribute__((target("avx512f,avx2,fma"))) static void vector_avx512(const float *x, int depth,
                                                                      const float *matrix, int ld,
                                                                      int rows_are_columns, int count,
                                                                      float alpha, float beta,
                                                                      float *out, int stride) {
  vector_body(x, depth, matrix, ld, rows_are_columns, count, alpha, beta, out, stride, 16);
}
#endif

static void vector_generic(const float *x, int depth, const float *matrix, int ld,
                           int rows_are_columns, int count, float alpha, float beta,
                           float *out, int stride) {
  vector_body(x, depth, matrix, ld, rows_are_columns, count, alpha, beta, out, stride, 8);
}

static vector_fn vector_times_matrix = vector_generic;

/* --- threads: the caller takes the first share of a job, a resident worker each other --- */

/* Weights in a product below which one thread computes it alone. */
#define MIN_SHARED_WEIGHTS 65536

static int thread_count = 1;
static pthread_once_t workers_started = PTHREAD_ONCE_INIT;
static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
/* The workers' next job: a task's parts when current_task is set, else
 * their shares of current_count products, one after another. */
typedef void (*part_fn)(void *context, int part, int parts);
static const Product *current;
static int current_count;
static part_fn current_task;
static void *current_context;
static atomic_ulong generation;  /* bumped once per job */
static atomic_int pending;       /* workers still computing it */
static atomic_int sleepers;
static pthread_mutex_t wake_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;
/* Within a forward pass the products come every few tens of microseconds:
 * a worker spins this long before it sleeps, so it is awake for the next
 * one. Longer spins cost more than they save: the spinning worker
 * takes a core from the thread building the next step's graph. */
#define SPIN_NANOSECONDS 100000L

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ volatile("yield");
#endif
}

static long monotonic_nanoseconds(void) {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return now.tv_sec * 1000000000L + now.tv_nsec;
}

/* Spin until the generation moves on from `seen`, for at most SPIN_NANOSECONDS. */
static unsigned long spin_for_next(unsigned long seen) {
  long deadline = monotonic_nanoseconds() + SPIN_NANOSECONDS;
  for (int spin = 1;; ++spin) {
    unsigned long now = atomic_load(&generation);
    if (now != seen || (spin % 256 == 0 && monotonic_nanoseconds() > deadline)) return now;
    cpu_relax();
  }
}

static void share(const Product *p, int index, int *first, int *last) {
  int blocks = (p->cols + WEIGHT_BLOCK - 1) / WEIGHT_BLOCK;
  int start = (int)((long)blocks * index / thread_count) * WEIGHT_BLOCK;
  int end = (int)((long)blocks * (index + 1) / thread_count) * WEIGHT_BLOCK;
  *first = start < p->cols ? start : p->cols;
  *last = end < p->cols ? end : p->cols;
}

/* --- reading ahead: between two products, the worker fetches the next one's weights ----- */

/* A decode step multiplies by the same matrices in the same order every
 * step, and between two products the calling thread does other work (norms,
 * attention, MLX's bookkeeping) while the worker waits and the memory bus
 * idles. The worker spends that wait fetching into
 * its L2 the first rows of its own share and of the caller's share of the
 * product that came next the last time (the caller then reads its rows from
 * this core's cache), as much as L2 holds: more is evicted before it is read.
 *
 * The table maps each product's weights to the product after it. A stale
 * entry (weights since freed) costs at most a wasted fetch: a prefetch
 * never faults. */
#define SUCCESSOR_BITS 10
#define SUCCESSOR_SLOTS (1 << SUCCESSOR_BITS)
#define SUCCESSOR_PROBES 8

typedef struct {
  const void *after; /* the weights of the product before it */
  const void *w;
  int cols, depth, ldw, type;
} Successor;

static Successor successors[SUCCESSOR_SLOTS];
static const void *previous_weights;
static long read_ahead_bytes;

static size_t successor_slot(const void *after) {
  return (size_t)(((unsigned long)after >> 6) * 0x9E3779B97F4A7C15UL >> (64 - SUCCESSOR_BITS));
}

/* By the caller, holding pool_lock: the job of products first to last
 * comes after the previous job. */
static void remember_order(const Product *first, const Product *last) {
  if (previous_weights != NULL) {
    size_t slot = successor_slot(previous_weights);
    for (int probe = 0; probe < SUCCESSOR_PROBES; ++probe) {
      Successor *s = &successors[(slot + probe) % SUCCESSOR_SLOTS];
      if (s->after == previous_weights || s->after == NULL || probe == SUCCESSOR_PROBES - 1) {
        *s = (Successor){previous_weights, first->w, first->cols, first->depth, first->ldw, first->type};
        break;
      }
    }
  }
  previous_weights = last->w;
}

/* By a worker, while the caller still holds pool_lock. */
static int successor_of(const void *after, Successor *next) {
  size_t slot = successor_slot(after);
  for (int probe = 0; probe < SUCCESSOR_PROBES; ++probe) {
    const Successor *s = &successors[(slot + probe) % SUCCESSOR_SLOTS];
    if (s->after == after) {
      *next = *s;
      return 1;
    }
    if (s->after == NULL) return 0;
  }
  return 0;
}

/* A row of the caller's share and one of worker `index`'s in turn, until
 * read_ahead_bytes are asked for or the caller starts another product. */
static void read_ahead(const Successor *next, int index, unsigned long seen) {
  Product p = {.w = next->w, .cols = next->cols, .depth = next->depth, .ldw = next->ldw,
               .type = next->type};
  int firsts[2], lasts[2];
  share(&p, 0, &firsts[0], &lasts[0]);
  share(&p, index, &firsts[1], &lasts[1]);
  long row_bytes = (long)p.depth * (long)element_size(p.type), asked = 0;
  for (int row = 0; asked < read_ahead_bytes; ++row) {
    int any = 0;
    for (int t = 0; t < 2 && asked < read_ahead_bytes; ++t) {
      if (firsts[t] + row >= lasts[t]) continue;
      const char *start = weight_row(&p, firsts[t] + row, p.type);
      for (long b = 0; b < row_bytes; b += 64) __builtin_prefetch(start + b, 0, 2);
      asked += row_bytes;
      any = 1;
    }
    if (!any || atomic_load(&generation) != seen) return;
  }
}

static void *worker_main(void *arg) {
  int index = (int)(long)arg;
  unsigned long seen = 0;
  for (;;) {
    unsigned long now = spin_for_next(seen);
    if (now == seen) {
      pthread_mutex_lock(&wake_lock);
      atomic_fetch_add(&sleepers, 1);
      while ((now = atomic_load(&generation)) == seen) pthread_cond_wait(&wake, &wake_lock);
      atomic_fetch_sub(&sleepers, 1);
      pthread_mutex_unlock(&wake_lock);
    }
    seen = now;
    if (current_task != NULL) {
      current_task(current_context, index, thread_count);
      atomic_fetch_sub(&pending, 1);
      continue;
    }
    for (int i = 0; i < current_count; ++i) {
      int first, last;
      share(&current[i], index, &first, &last);
      compute(&current[i], first, last);
    }
    Successor next;
    int reads_ahead = read_ahead_bytes > 0 && successor_of(current[current_count - 1].w, &next);
    if (reads_ahead) atomic_fetch_add(&read_aheads, 1);
    atomic_fetch_sub(&pending, 1); /* current and the table may change from here on */
    if (reads_ahead) read_ahead(&next, index, seen);
  }
  return NULL;
}

/* A forked child has none of its parent's workers. */
static void forked_child(void) { thread_count = 1; }

static void start_workers(void) {
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  for (int i = 1; i < thread_count; ++i) {
    pthread_t worker;
    if (pthread_create(&worker, &attr, worker_main, (void *)(long)i) != 0) {
      thread_count = i;
      break;
    }
  }
  pthread_attr_destroy(&attr);
  pthread_atfork(NULL, NULL, forked_child);
}

/* By the caller holding pool_lock, once the job is set: every worker takes it up. */
static void hand_to_workers(void) {
  atomic_store(&pending, thread_count - 1);
  atomic_fetch_add(&generation, 1);
  if (atomic_load(&sleepers) > 0) {
    pthread_mutex_lock(&wake_lock);
    pthread_cond_broadcast(&wake);
    pthread_mutex_unlock(&wake_lock);
  }
}

static void wait_for_workers(void) {
  while (atomic_load(&pending) > 0) cpu_relax();
  pthread_mutex_unlock(&pool_lock);
}

/* Products that follow one another with nothing between them (a layer's
 * query, key and value projections of the same rows) are one job: each
 * thread computes its share of every one of them in turn, and waits for
 * the others once. Each output is computed as it is alone. */
static void run_products(const Product *ps, int count) {
  long weights = 0;
  for (int i = 0; i < count; ++i) weights += (long)ps[i].cols * ps[i].depth;
  /* Small products are not worth waking anyone, and the workers serve one
   * caller at a time: should two threads multiply at once, the second
   * computes alone. */
  if (thread_count == 1 || weights < MIN_SHARED_WEIGHTS || pthread_mutex_trylock(&pool_lock) != 0) {
    for (int i = 0; i < count; ++i) compute(&ps[i], 0, ps[i].cols);
    return;
  }
  pthread_once(&workers_started, start_workers);
  remember_order(&ps[0], &ps[count - 1]);
  current = ps;
  current_count = count;
  current_task = NULL;
  hand_to_workers();
  for (int i = 0; i < count; ++i) {
    int first, last;
    share(&ps[i], 0, &first, &last);
    compute(&ps[i], first, last);
  }
  wait_for_workers();
}

static void run_product(const Product *p) { run_products(p, 1); }

/* Runs task(context, part, parts) for every part, part 0 on the calling
 * thread and the others on the workers, and returns once all have run.
 * Attention splits its heads between threads this way: the workers are the
 * ones the products keep awake, where a thread of its own would take longer
 * to start than a decode step's attention takes. With one thread, or the
 * pool busy with another caller, the caller runs every part in turn. */
void nextterm_skinny_parallel(part_fn task, void *context) {
  if (thread_count == 1 || pthread_mutex_trylock(&pool_lock) != 0) {
    for (int part = 0; part < thread_count; ++part) task(context, part, thread_count);
    return;
  }
  pthread_once(&workers_started, start_workers);
  current_task = task;
  current_context = context;
  hand_to_workers();
  task(context, 0, thread_count);
  wait_for_workers();
}

/* Once only: the worker pool is sized by the first call. `read_ahead`: 0
 * keeps the workers from fetching the next product's weights between two;
 * `avx512`: 0 keeps products of several rows on the AVX2 kernel. */
void nextterm_skinny_init(sgemm_fn sgemm, sgemv_fn sgemv, int threads, int read_ahead,
                          int avx512) {
  if (blas_sgemm != NULL) return;
  blas_sgemm = sgemm;
  blas_sgemv = sgemv;
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    columns = columns_avx2;
    rows_in_turn = rows_in_turn_avx2;
    vector_times_matrix = vector_avx2;
    q8_columns = q8_columns_avx2;
  }
  if (avx512 && __builtin_cpu_supports("avx512f") && columns == columns_avx2) {
    columns = columns_avx512;
    rows_in_turn = rows_in_turn_avx512;
    vector_times_matrix = vector_avx512;
    q8_columns = q8_columns_avx512;
  }
#endif
  thread_count = threads < 1 ? 1 : threads > MAX_THREADS ? MAX_THREADS : threads;
  long l2 = 0;
#ifdef _SC_LEVEL2_CACHE_SIZE
  l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
#endif
  read_ahead_bytes = read_ahead && thread_count > 1 ? (l2 > 0 ? l2 : 1L << 20) : 0;
}

/* Bytes a worker fetches ahead between two products; 0 when it does not. */
long nextterm_skinny_read_ahead_bytes(void) { return read_ahead_bytes; }

/* Whether products of several rows take the AVX-512 kernel. */
int nextterm_skinny_avx512(void) {
#if defined(__x86_64__)
  return columns == columns_avx512;
#else
  return 0;
#endif
}

/* --- the entry point MLX calls -------------------------------------------------------- */

/* out = alpha * x . M + beta * out for one vector x (every incx-th float) and a
 * matrix M of `count` outputs by `depth` (laid out as vector_body says): small
 * ones here, the rest through OpenBLAS's sgemv. */
static void vector_product(const float *x, int incx, int depth, const float *matrix, int ld,
                           int rows_are_columns, int count, float alpha, float beta,
                           float *out, int stride) {
  if (incx == 1 && (long)count * depth <= SMALL_PRODUCT) {
    vector_times_matrix(x, depth, matrix, ld, rows_are_columns, count, alpha, beta, out,
                        stride);
    atomic_fetch_add(&vector_calls, 1);
    return;
  }
  /* With beta == 0 BLAS may still scale y by zero, and MLX's output buffers
   * are uninitialised (NaN * 0 is NaN), so clear y first. */
  if (beta == 0.0f)
    for (int j = 0; j < count; ++j) out[(size_t)j * stride] = 0.0f;
  atomic_fetch_add(&gemv_calls, 1);
  blas_sgemv(ROW_MAJOR, rows_are_columns ? NO_TRANS : TRANS, rows_are_columns ? count : depth,
             rows_are_columns ? depth : count, alpha, matrix, ld, x, incx, beta, out, stride);
}

/* A Linear layer on a few rows: a[m, k] times the transpose of the weight b[n, k]. */
static void linear_product(int m, int n, int k, float alpha, const float *a, int lda,
                           const float *b, int ldb, float beta, float *c, int ldc) {
  Product p = {a, b, c, m, n, k, lda, ldb, ldc, alpha, beta, F32};
  run_product(&p);
}

void cblas_sgemm(int order, int trans_a, int trans_b, int m, int n, int k, float alpha,
                 const float *a, int lda, const float *b, int ldb, float beta, float *c,
                 int ldc) {
  if (order == ROW_MAJOR && m > 0 && n > 0 && alpha == 0.0f) {
    /* BLAS reads neither a nor b then, so an Inf there must not turn c
     * into NaN; OpenBLAS 0.3.21's sgemm multiplies them anyway. */
    for (int i = 0; i < m; ++i)
      for (int j = 0; j < n; ++j) {
        float *out = c + (size_t)i * ldc + j;
        *out = beta == 0.0f ? 0.0f : beta * *out;
      }
    return;
  }
  int linear = trans_a == NO_TRANS && trans_b == TRANS;
  if (order == ROW_MAJOR && m > 0 && n > 0 && k > 0) {
    if (m == 1) { /* one row, as in a decode step: c[1, n] = a[1, k] . op(b)[k, n] */
      if (linear && (long)n * k > SMALL_PRODUCT)
        linear_product(m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
      else
        vector_product(a, trans_a == NO_TRANS ? 1 : lda, k, b, ldb, trans_b == TRANS, n, alpha,
                       beta, c, 1);
      atomic_fetch_add(&skinny_calls, 1);
      return;
    }
    if (n == 1) { /* one column: c[m, 1] = op(a)[m, k] . b[k, 1] */
      vector_product(b, trans_b == NO_TRANS ? ldb : 1, k, a, lda, trans_a == NO_TRANS, m, alpha,
                     beta, c, ldc);
      atomic_fetch_add(&skinny_calls, 1);
      return;
    }
    if (linear && m <= MAX_ROWS) {
      linear_product(m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
      atomic_fetch_add(&skinny_calls, 1);
      return;
    }
  }
  blas_sgemm(order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

/* Whether a Linear layer's product of m rows and an (n, k) weight of `type`
 * goes to the kernel, as cblas_sgemm above and the functions below send it:
 * one row times a weight larger than a small product, or up to MAX_ROWS
 * rows; 8-bit weights take the kernel for any product of up to MAX_ROWS. */
static int kernel_takes(int type, int m, int n, int k) {
  if (type == Q8) return m <= MAX_ROWS;
  return (m == 1 && (long)n * k > SMALL_PRODUCT) || (m > 1 && n > 1 && m <= MAX_ROWS);
}

/* --- bfloat16 weights, computed in float32 ----------------------------------------------- */

static atomic_ulong bf16_calls;

/* How many products of bfloat16 weights this library took. */
unsigned long nextterm_skinny_bf16_calls(void) { return atomic_load(&bf16_calls); }

/* Each calling thread's float32 buffer for a whole weight, kept for the
 * next: a fresh allocation of a weight's size at every product would fault
 * in fresh pages each time. */
static __thread float *buffer;
static __thread size_t buffer_capacity;

static float *float_buffer(size_t count) {
  if (count > buffer_capacity) {
    free(buffer);
    buffer = malloc(count * sizeof(float));
    if (buffer == NULL) {
      fprintf(stderr, "nextterm-mlx: no memory left for a float32 copy of a weight\n");
      abort();
    }
    buffer_capacity = count;
  }
  return buffer;
}

/* The weight w[n, k] as float32, in the calling thread's buffer, widened by
 * every thread: a prefill would otherwise wait on one thread's widening
 * before OpenBLAS's threads start. */
static const float *widened(const void *w, int n, int k, int type, const float *scales,
                            const float *biases) {
  Product p = {.w = w, .cols = n, .depth = k, .ldw = k, .type = type, .scales = scales,
               .biases = biases, .widened = float_buffer((size_t)n * k)};
  run_product(&p);
  return p.widened;
}

/* A Linear layer's product c[m, n] = a[m, k] . w[n, k]^T for a bfloat16
 * weight w, with the numbers cblas_sgemm above gives for w widened to
 * float32: the kernel reads the bfloat16 weights where cblas_sgemm would
 * have it read float32 ones; any other product is cblas_sgemm's own on the
 * whole weight widened. Not in blocks of weight rows: OpenBLAS's sgemm gives
 * an output different numbers in a product of fewer columns, for some
 * column counts. */
void nextterm_linear_bf16(int m, int n, int k, const float *a, const uint16_t *w, float *c) {
  atomic_fetch_add(&bf16_calls, 1);
  if (kernel_takes(BF16, m, n, k)) {
    Product p = {a, w, c, m, n, k, k, k, n, 1.0f, 0.0f, BF16};
    run_product(&p);
    atomic_fetch_add(&skinny_calls, 1);
    return;
  }
  cblas_sgemm(ROW_MAJOR, NO_TRANS, TRANS, m, n, k, 1.0f, a, k, widened(w, n, k, BF16, NULL, NULL), k, 0.0f,
              c, n);
}

/* --- 8-bit weights, computed in float32 ---------------------------------------------------- */

static atomic_ulong q8_calls;

/* How many products of 8-bit weights this library took. */
unsigned long nextterm_skinny_q8_calls(void) { return atomic_load(&q8_calls); }

/* The sum of each GROUP of depths of each row of a[m, k], in a buffer the caller frees. */
static float *input_group_sums(int m, int k, const float *a) {
  int groups = k / GROUP;
  float *sums = malloc((size_t)m * groups * sizeof(float));
  if (sums == NULL) {
    fprintf(stderr, "nextterm-mlx: no memory left for an 8-bit product\n");
    abort();
  }
  for (int i = 0; i < m; ++i)
    for (int g = 0; g < groups; ++g) {
      float sum = 0.0f;
      for (int j = g * GROUP; j < (g + 1) * GROUP; ++j) sum += a[(size_t)i * k + j];
      sums[(size_t)i * groups + g] = sum;
    }
  return sums;
}

/* A Linear layer's product c[m, n] = a[m, k] . w[n, k]^T for 8-bit weights
 * q[n, k] in mlx-lm's affine format (w = scale * q + bias for each group of
 * GROUP depths; k a multiple of GROUP), scales and biases[n, k / GROUP] in
 * float32. Up to MAX_ROWS rows the kernel reads the bytes as they are;
 * beyond, the weight is dequantized whole into the thread's float32 buffer
 * for OpenBLAS's sgemm. */
void nextterm_linear_q8(int m, int n, int k, const float *a, const uint8_t *q, const float *scales,
                        const float *biases, float *c) {
  atomic_fetch_add(&q8_calls, 1);
  if (kernel_takes(Q8, m, n, k)) {
    float *group_sums = input_group_sums(m, k, a);
    Product p = {a, q, c, m, n, k, k, k, n, 1.0f, 0.0f, Q8, scales, biases, group_sums};
    run_product(&p);
    free(group_sums);
    return;
  }
  blas_sgemm(ROW_MAJOR, NO_TRANS, TRANS, m, n, k, 1.0f, a, k, widened(q, n, k, Q8, scales, biases), k, 0.0f,
             c, n);
}

/* --- several Linear layers of the same rows ---------------------------------------------- */

#define MAX_SEVERAL 8

static atomic_ulong several_jobs;

/* How many times the products of several layers were one job of the threads. */
unsigned long nextterm_skinny_several_jobs(void) { return atomic_load(&several_jobs); }

/* The products c_i[m, n_i] = a[m, k] . w_i[n_i, k]^T of `count` Linear
 * layers of one weight type: float32 (as cblas_sgemm above takes them),
 * bfloat16 (as nextterm_linear_bf16) or 8-bit with scales and biases (as
 * nextterm_linear_q8; NULL for the others). Each output is the number that
 * layer's own function gives. When the kernel takes every one of them they
 * are one job of the threads (see run_products); otherwise each goes to its
 * own function in turn. */
void nextterm_linear_several(int count, int type, int m, int k, const float *a, const int *n,
                             const void *const *w, const float *const *scales,
                             const float *const *biases, float *const *c) {
  int together = count <= MAX_SEVERAL;
  for (int i = 0; i < count && together; ++i) together = kernel_takes(type, m, n[i], k);
  if (!together) {
    for (int i = 0; i < count; ++i) {
      if (type == Q8)
        nextterm_linear_q8(m, n[i], k, a, w[i], scales[i], biases[i], c[i]);
      else if (type == BF16)
        nextterm_linear_bf16(m, n[i], k, a, w[i], c[i]);
      else
        cblas_sgemm(ROW_MAJOR, NO_TRANS, TRANS, m, n[i], k, 1.0f, a, k, w[i], k, 0.0f, c[i], n[i]);
    }
    return;
  }
  float *group_sums = type == Q8 ? input_group_sums(m, k, a) : NULL;
  Product products[MAX_SEVERAL];
  for (int i = 0; i < count; ++i)
    products[i] = (Product){a, w[i], c[i], m, n[i], k, k, k, n[i], 1.0f, 0.0f, type,
                            type == Q8 ? scales[i] : NULL, type == Q8 ? biases[i] : NULL, group_sums};
  run_products(products, count);
  atomic_fetch_add(&several_jobs, 1);
  free(group_sums);
  atomic_fetch_add(type == Q8 ? &q8_calls : &skinny_calls, count);
  if (type == BF16) atomic_fetch_add(&bf16_calls, count);
}
