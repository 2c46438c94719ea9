/*
 * Scaled dot-product attention as one MLX primitive for the CPU.
 *
 * MLX has no CPU kernel for mx.fast.scaled_dot_product_attention: it runs a
 * dozen operations instead (the queries times the keys as one small BLAS
 * product per sequence and key head, the mask, a softmax with MLX's
 * one-element-at-a-time exp, the weights times the values), each a task of
 * its own on the stream's thread. In a decode step of a batch that is tens
 * of thousands of tiny products.
 *
 * Here each query row takes one pass: its scores against the key rows it
 * may see (masked positions are skipped, not computed, and a fixed-size
 * cache's room after the last position it sees is not visited), their softmax with
 * the vectorised exp, and the weighted sum of the value rows. The inputs
 * are read where they lie, through their strides: a KV cache's slice is not
 * copied, nor a mask broadcast over heads or sequences (queries, keys or
 * values whose last dimension is strided are). The (sequence, key head)
 * groups are shared with the skinny-product kernel's workers when given
 * its nextterm_skinny_parallel, else, from SHARED_WORK multiply-adds on,
 * with a thread of its own. The semantics are
 * MLX's: a boolean mask hides positions, a float mask is added to the
 * scores, "causal" aligns the queries with the last keys, and a row that
 * may see nothing averages all the values. The output is laid out by head,
 * as MLX's is, or by position (as_rows), as the output projection takes it:
 * that spares a layer the transpose and reshape between the two.
 */

#include <algorithm>
#include <array>
#include <cstdint>
#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>

#include "_vector_exp.h"
#include "mlx/backend/cpu/encoder.h"
#include "mlx/fast.h"
#include "mlx/mlx.h"
#include "mlx/primitives.h"

namespace mx = mlx::core;
namespace nb = nanobind;
using namespace nb::literals;

namespace {

constexpr float LOWEST = std::numeric_limits<float>::lowest();  // MLX's fill for hidden positions
/* A score this far or further below the highest has an exp of 0. */
constexpr float EXP_FLOOR = 87.0f;

/* A 4-D float array whose last dimension is contiguous, by its other strides. */
struct Rows {
  const float *data;
  int64_t batch_stride, head_stride, row_stride;
  const float *row(int b, int h, int i) const { return data + b * batch_stride + h * head_stride + i * row_stride; }
};

struct Problem {
  Rows queries, keys, values;
  float *out;
  int batch, query_heads, kv_heads, query_length, kv_length, dim;
  const bool *hide;    // or NULL: a boolean mask, false where hidden
  const float *added;  // or NULL: a float mask, added to the scores
  int64_t mask_strides[4];
  bool causal;
  float scale;
  bool as_rows;  // out is (batch, query_length, query_heads * dim), not (batch, query_heads, query_length, dim)
};

/* The loops of a query row, with AVX2 and FMA (primitives.py checks the CPU has them). */
struct Avx2 {
  __attribute__((target("avx2,fma"))) static float horizontal_sum(__m256 v) {
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, v);
    return ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
  }

  /* Four sums, so that the multiply-adds do not wait on each other. */
  __attribute__((target("avx2,fma"))) static float dot(const float *a, const float *b, int n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
    int d = 0;
    for (; d + 32 <= n; d += 32) {
      s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + d), _mm256_loadu_ps(b + d), s0);
      s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + d + 8), _mm256_loadu_ps(b + d + 8), s1);
      s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + d + 16), _mm256_loadu_ps(b + d + 16), s2);
      s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + d + 24), _mm256_loadu_ps(b + d + 24), s3);
    }
    for (; d + 8 <= n; d += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + d), _mm256_loadu_ps(b + d), s0);
    float sum = horizontal_sum(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
    for (; d < n; ++d) sum += a[d] * b[d];
    return sum;
  }

  /* scores - max is at most 0; below -87 its exp is under 2e-38 and counts as
   * 0. A NaN stays NaN (max_ps returns its second operand when one is NaN).
   * The exps are summed one after another in the order of the positions: a
   * hidden position adds an exact 0, so the sum is the same whether the
   * positions a query sees start the buffer or follow a batch's padding,
   * and whether the buffer ends with them or has room to spare. */
  __attribute__((target("avx2,fma"))) static float exp_and_sum(float *scores, int n, float max) {
    int l = 0;
    for (; l + 8 <= n; l += 8) exp_of_eight(scores + l, scores + l, max);
    if (l < n) {  // the last few through the same exp, in a vector padded with exp(0)
      alignas(32) float last[8];
      for (int i = 0; i < 8; ++i) last[i] = l + i < n ? scores[l + i] : max;
      exp_of_eight(last, last, max);
      std::copy(last, last + (n - l), scores + l);
    }
    float sum = 0.0f;
    for (l = 0; l < n; ++l) sum += scores[l];
    return sum;
  }

  __attribute__((target("avx2,fma"))) static void exp_of_eight(const float *scores, float *out, float max) {
    const __m256 lowest = _mm256_set1_ps(-EXP_FLOOR);
    __m256 t = _mm256_sub_ps(_mm256_loadu_ps(scores), _mm256_set1_ps(max));
    _mm256_storeu_ps(out, _mm256_andnot_ps(_mm256_cmp_ps(t, lowest, _CMP_LT_OQ), exp_avx2(_mm256_max_ps(lowest, t))));
  }

  /* 64 dimensions at a time, their sums held in registers over all rows. */
  __attribute__((target("avx2,fma"))) static void weighted_sum(float *out, const Rows &values, int b, int h,
                                                               const float *weights, int count, int dim,
                                                               float factor) {
    const __m256 factors = _mm256_set1_ps(factor);
    int d = 0;
    for (; d + 64 <= dim; d += 64) {
      __m256 sums[8];
      for (int j = 0; j < 8; ++j) sums[j] = _mm256_setzero_ps();
      for (int l = 0; l < count; ++l) {
        if (weights[l] == 0.0f) continue;
        const __m256 weight = _mm256_set1_ps(weights[l]);
        const float *value = values.row(b, h, l) + d;
        for (int j = 0; j < 8; ++j) sums[j] = _mm256_fmadd_ps(weight, _mm256_loadu_ps(value + 8 * j), sums[j]);
      }
      for (int j = 0; j < 8; ++j) _mm256_storeu_ps(out + d + 8 * j, _mm256_mul_ps(sums[j], factors));
    }
    for (; d < dim; ++d) {
      float sum = 0.0f;
      for (int l = 0; l < count; ++l)
        if (weights[l] != 0.0f) sum += weights[l] * values.row(b, h, l)[d];
      out[d] = sum * factor;
    }
  }
};

/* The query rows of key heads [first, last), counting over the batch. */
void attend(const Problem &p, int first, int last, float *scores) {
  const int64_t *ms = p.mask_strides;
  int group = p.query_heads / p.kv_heads;
  for (int g = first; g < last; ++g) {
    int b = g / p.kv_heads, kv_head = g % p.kv_heads;
    for (int h = kv_head * group; h < (kv_head + 1) * group; ++h) {
      for (int i = 0; i < p.query_length; ++i) {
        const float *query = p.queries.row(b, h, i);
        int visible = p.causal ? p.kv_length - p.query_length + i + 1 : p.kv_length;
        int64_t mask_row = b * ms[0] + h * ms[1] + i * ms[2];
        auto sees = [&](int l) { return l < visible && (p.hide == nullptr || p.hide[mask_row + l * ms[3]]); };
        /* The positions from `seen` on are hidden: their exps are exact zeros
         * (below), which add nothing to the sum, and their values are skipped. */
        int seen = p.kv_length;
        while (seen > 0 && !sees(seen - 1)) --seen;
        float max = LOWEST;
        for (int l = 0; l < seen; ++l) {
          float score = LOWEST;
          if (sees(l)) {
            score = Avx2::dot(query, p.keys.row(b, kv_head, l), p.dim) * p.scale;
            if (p.added) score += p.added[mask_row + l * ms[3]];
          }
          scores[l] = score;
          max = std::max(max, score);
        }
        /* Unless the highest score is so low that a hidden position's exp is
         * not 0 (or the row sees nothing, when MLX averages every value). */
        if (max - LOWEST <= EXP_FLOOR) {
          std::fill(scores + seen, scores + p.kv_length, LOWEST);
          seen = p.kv_length;
        }
        float total = Avx2::exp_and_sum(scores, seen, max);
        float *out = p.out + (p.as_rows ? ((int64_t)b * p.query_length + i) * p.query_heads + h
                                         : ((int64_t)b * p.query_heads + h) * p.query_length + i) * p.dim;
        Avx2::weighted_sum(out, p.values, b, kv_head, scores, seen, p.dim, 1.0f / total);
      }
    }
  }
}

/* Multiply-adds (queries x keys x dimension) from which a second thread
 * takes half of the (sequence, key head) groups. A decode step of 32 sequences of the 440M shape
 * has about 4 million, one of a single sequence 0.2 million. */
constexpr double SHARED_WORK = 2e6;
/* The same, when the skinny-product kernel's workers take the other parts:
 * they are awake already, so far less work pays for them. */
constexpr double SHARED_WORK_WITH_WORKERS = 5e4;

/* The skinny-product kernel's nextterm_skinny_parallel: part(context, i, n) for every i < n, on n threads. */
typedef void (*part_fn)(void *context, int part, int parts);
typedef void (*parallel_fn)(part_fn part, void *context);

/* Part `part` of `parts` of the (sequence, key head) groups. */
void attend_part(void *context, int part, int parts) {
  const Problem &p = *static_cast<const Problem *>(context);
  int groups = p.batch * p.kv_heads;
  std::vector<float> scores(p.kv_length);
  attend(p, (int)((long)groups * part / parts), (int)((long)groups * (part + 1) / parts), scores.data());
}

void attend_everything(const Problem &p, uintptr_t parallel) {
  int groups = p.batch * p.kv_heads;
  double work = (double)p.batch * p.query_heads * p.query_length * p.kv_length * p.dim;
  if (parallel != 0 && groups >= 2 && work >= SHARED_WORK_WITH_WORKERS)
    return reinterpret_cast<parallel_fn>(parallel)(attend_part, const_cast<Problem *>(&p));
  std::vector<float> scores(2 * (size_t)p.kv_length);  // one row's worth for each thread
  if (work < SHARED_WORK || groups < 2) return attend(p, 0, groups, scores.data());
  std::thread helper;
  try {
    helper = std::thread(attend, std::cref(p), 0, groups / 2, scores.data() + p.kv_length);
  } catch (const std::system_error &) {  // no thread to be had: all of it here
    return attend(p, 0, groups, scores.data());
  }
  attend(p, groups / 2, groups, scores.data());
  helper.join();
}

/* Where an input's elements lie: read when the primitive is encoded, used
 * when its task runs. */
struct Layout {
  const void *data;
  int64_t shape[4], strides[4];

  explicit Layout(const mx::array &a) : data(a.data<void>()) {
    for (int d = 0; d < 4; ++d) shape[d] = a.shape(d), strides[d] = a.strides()[d];
  }
};

/* `input` as Rows, copied into `storage` when its last dimension is strided. */
Rows rows_of(const Layout &input, std::vector<float> &storage) {
  const int64_t *n = input.shape, *s = input.strides;
  const float *from = static_cast<const float *>(input.data);
  if (s[3] == 1) return {from, s[0], s[1], s[2]};
  storage.resize(n[0] * n[1] * n[2] * n[3]);
  for (int64_t a = 0; a < n[0]; ++a)
    for (int64_t b = 0; b < n[1]; ++b)
      for (int64_t c = 0; c < n[2]; ++c)
        for (int64_t d = 0; d < n[3]; ++d)
          storage[((a * n[1] + b) * n[2] + c) * n[3] + d] = from[a * s[0] + b * s[1] + c * s[2] + d * s[3]];
  return {storage.data(), n[1] * n[2] * n[3], n[2] * n[3], n[3]};
}

/* The strides that read a mask of up to four dimensions as if broadcast to
 * (batch, heads, queries, keys): 0 along a dimension it lacks or has once.
 * Broadcasting it here rather than with mx::broadcast_to spares every layer
 * of every forward pass a Broadcast node. */
std::array<int64_t, 4> broadcast_strides(const mx::array &mask) {
  std::array<int64_t, 4> strides{0, 0, 0, 0};
  for (int d = 0, dims = static_cast<int>(mask.ndim()), missing = 4 - dims; d < dims; ++d)
    if (mask.shape(d) != 1) strides[missing + d] = mask.strides()[d];
  return strides;
}

/* The output's shape for queries (batch, heads, length, dim): theirs, or by position
 * (batch, length, heads * dim). */
mx::Shape output_shape(const mx::array &queries, bool as_rows) {
  if (!as_rows) return queries.shape();
  return {queries.shape(0), queries.shape(2), queries.shape(1) * queries.shape(3)};
}

/* (batch, heads, length, dim) as (batch, length, heads * dim). */
mx::array as_rows(const mx::array &by_head, mx::Stream s) {
  return mx::reshape(mx::transpose(by_head, {0, 2, 1, 3}, s), output_shape(by_head, true), s);
}

class Attention : public mx::Primitive {
 public:
  Attention(mx::Stream stream, float scale, bool causal, bool as_rows, uintptr_t parallel)
      : mx::Primitive(stream), scale_(scale), causal_(causal), as_rows_(as_rows), parallel_(parallel) {}

  void eval_cpu(const std::vector<mx::array> &inputs, std::vector<mx::array> &outputs) override {
    mx::array &out = outputs[0];
    out.set_data(mx::allocator::malloc(out.nbytes()));
    auto &encoder = mx::cpu::get_command_encoder(stream());
    for (const mx::array &input : inputs) encoder.set_input_array(input);
    encoder.set_output_array(out);
    Layout queries(inputs[0]), keys(inputs[1]), values(inputs[2]);
    const void *mask = inputs.size() == 4 ? inputs[3].data<void>() : nullptr;
    bool hides = mask && inputs[3].dtype() == mx::bool_;
    std::array<int64_t, 4> strides = mask ? broadcast_strides(inputs[3]) : std::array<int64_t, 4>{};
    encoder.dispatch([=, out = out.data<float>(), causal = causal_, scale = scale_, as_rows = as_rows_,
                      parallel = parallel_]() {
      std::vector<float> copies[3];
      Problem p{rows_of(queries, copies[0]), rows_of(keys, copies[1]), rows_of(values, copies[2]), out,
                (int)queries.shape[0], (int)queries.shape[1], (int)keys.shape[1], (int)queries.shape[2],
                (int)keys.shape[2], (int)queries.shape[3], nullptr, nullptr, {0, 0, 0, 0}, causal, scale, as_rows};
      if (mask) {
        for (int d = 0; d < 4; ++d) p.mask_strides[d] = strides[d];
        if (hides) p.hide = static_cast<const bool *>(mask);
        else p.added = static_cast<const float *>(mask);
      }
      attend_everything(p, parallel);
    });
  }

  void eval_gpu(const std::vector<mx::array> &, std::vector<mx::array> &) override {
    throw std::runtime_error("[attention] has no GPU implementation");
  }

  /* Gradients of the queries, keys and values through MLX's own attention,
   * the mask held fixed (MLX's attention gives none for it either). */
  std::vector<mx::array> vjp(const std::vector<mx::array> &primals, const std::vector<mx::array> &cotangents,
                             const std::vector<int> &argnums, const std::vector<mx::array> &) override {
    std::optional<mx::array> mask;
    if (primals.size() == 4) mask = primals[3];
    auto stock = [this, mask](const std::vector<mx::array> &qkv) {
      mx::array out = mx::fast::scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], scale_,
                                                             causal_ ? "causal" : "", mask, {}, false, stream());
      return std::vector<mx::array>{as_rows_ ? as_rows(out, stream()) : out};
    };
    auto [_, grads] = mx::vjp(stock, {primals[0], primals[1], primals[2]}, cotangents);
    std::vector<mx::array> wanted;
    for (int arg : argnums) wanted.push_back(arg < 3 ? grads[arg] : mx::zeros_like(primals[arg], stream()));
    return wanted;
  }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array> &inputs) override {
    return {output_shape(inputs[0], as_rows_)};
  }

  const char *name() const override { return "Attention"; }
  bool is_equivalent(const mx::Primitive &other) const override {
    const Attention &o = static_cast<const Attention &>(other);
    return scale_ == o.scale_ && causal_ == o.causal_ && as_rows_ == o.as_rows_ && parallel_ == o.parallel_;
  }

 private:
  float scale_;
  bool causal_, as_rows_;
  uintptr_t parallel_;
};

mx::array attention(const mx::array &queries, const mx::array &keys, const mx::array &values, float scale,
                    const std::string &mask_mode, const std::optional<mx::array> &mask, bool as_rows,
                    uintptr_t parallel) {
  bool shapes_fit = queries.ndim() == 4 && keys.ndim() == 4 && values.shape() == keys.shape() &&
                    keys.shape(0) == queries.shape(0) && keys.shape(3) == queries.shape(3) && keys.shape(1) > 0 &&
                    queries.shape(1) % keys.shape(1) == 0 && queries.shape(2) <= keys.shape(2);
  bool dtypes_fit = queries.dtype() == mx::float32 && keys.dtype() == mx::float32 && values.dtype() == mx::float32 &&
                    (!mask || mask->dtype() == mx::bool_ || mask->dtype() == mx::float32);
  if (!shapes_fit || !dtypes_fit || (mask_mode != "" && mask_mode != "causal") || (mask && mask_mode != ""))
    throw std::invalid_argument(
        "[attention] takes float32 queries (B, H, L, D) and keys and values (B, H / n, >= L, D), with a "
        "bool or float32 mask array or the mode \"causal\"");
  mx::Stream stream = mx::default_stream(mx::Device::cpu);
  std::vector<mx::array> inputs = {queries, keys, values};
  if (mask) {
    mx::Shape scores = {queries.shape(0), queries.shape(1), queries.shape(2), keys.shape(2)};
    bool broadcasts = mask->ndim() <= 4;
    for (int d = 0, dims = static_cast<int>(mask->ndim()), missing = 4 - dims; broadcasts && d < dims; ++d)
      broadcasts = mask->shape(d) == 1 || mask->shape(d) == scores[missing + d];
    if (!broadcasts)
      throw std::invalid_argument("[attention] takes a mask that broadcasts to (B, H, L, keys)");
    inputs.push_back(*mask);
  }
  return mx::array(output_shape(queries, as_rows), mx::float32,
                   std::make_shared<Attention>(stream, scale, mask_mode == "causal", as_rows, parallel),
                   std::move(inputs));
}

}  // namespace

void bind_attention(nb::module_ &m) {
  m.def("attention", &attention, "queries"_a, "keys"_a, "values"_a, "scale"_a, "mask_mode"_a = "",
        "mask"_a = nb::none(), "as_rows"_a = false, "parallel"_a = 0,
        "softmax(queries @ keys.T * scale + mask) @ values on the default CPU stream, as "
        "mx.fast.scaled_dot_product_attention computes it, for float32 arrays: (B, H, L, D), or with "
        "`as_rows` (B, L, H * D), the heads of each position side by side as an output projection takes them. "
        "`parallel`: the address of the skinny-product kernel's nextterm_skinny_parallel, whose threads then "
        "share the heads; 0 for a thread of its own on large problems only.");
}
