"""NextTerm's model: the Qwen3 forward pass, with mlx-lm's parameter names.

It computes what mlx_lm.models.qwen3 computes, from the same ModelArgs, and
a converted folder loads in either. The difference is that its Linear
products, norms, SwiGLU, attention and rotary embedding go through a Kernels
object: MLX's own operations by default, the Linux-CPU pieces
(nextterm_mlx/cpu) where the loader chose them. The rotation is made once a
forward pass, for the positions the cache says, and handed to every layer,
which norms and rotates its query and key heads in one call (one operation
where the CPU pieces take it).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.activations import swiglu
from mlx_lm.models.base import create_attention_mask, scaled_dot_product_attention
from mlx_lm.models.qwen3 import ModelArgs
from mlx_lm.models.rope_utils import initialize_rope

Rotation = Callable[[mx.array], mx.array]


class Kernels:
    """The operations the forward pass delegates, as MLX computes them."""

    def linear(self, layer: nn.Module, x: mx.array) -> mx.array:
        """x through a Linear layer, or an Embedding used as the output head."""
        return layer.as_linear(x) if hasattr(layer, "as_linear") else layer(x)

    def linears(self, layers: tuple[nn.Module, ...], x: mx.array) -> list[mx.array]:
        """x through each of several Linear layers."""
        return [self.linear(layer, x) for layer in layers]

    def reads_stored(self, layer: nn.Module) -> bool:
        """Whether `linear` multiplies the layer's weight as stored, where the
        loader would otherwise cast it to the compute dtype."""
        return False

    def rms_norm(self, layer: nn.RMSNorm, x: mx.array) -> mx.array:
        return layer(x)

    def rotated_heads(self, norm: nn.RMSNorm, x: mx.array, heads: int, rotate: Rotation) -> mx.array:
        """The heads of a query or key projection x (B, L, heads * head_dim),
        each normed and then rotated, heads first: (B, heads, L, head_dim)."""
        B, L, _ = x.shape
        return rotate(self.rms_norm(norm, x.reshape(B, L, heads, -1)).transpose(0, 2, 1, 3))

    def swiglu(self, gate: mx.array, x: mx.array) -> mx.array:
        return swiglu(gate, x)

    def alike_rows(self) -> Optional[int]:
        """Up to how many rows a forward pass gives each row the very numbers
        it gets alone, so that a batch decodes each sequence exactly as it
        decodes alone; None when no such bound is known (MLX's own
        operations promise none)."""
        return None

    def attention(self, queries: mx.array, keys: mx.array, values: mx.array, cache: Any, scale: float,
                  mask: Any) -> mx.array:
        """Attention of queries (B, heads, L, head_dim) over keys and values,
        by position as the output projection takes it: (B, L, heads * head_dim)."""
        B, _, L, _ = queries.shape
        output = scaled_dot_product_attention(queries, keys, values, cache=cache, scale=scale, mask=mask)
        return output.transpose(0, 2, 1, 3).reshape(B, L, -1)

    def rotation(self, rope: nn.Module, offset: Any, length: int, dtype: mx.Dtype) -> Rotation:
        """The rotation of `length` positions from `offset`, for every layer."""
        return lambda x: rope(x, offset=offset)

    def describe(self) -> dict[str, Any]:
        return {"blas": "MLX's own", "primitives": "MLX's", "two_streams": False}


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        dim, head_dim = args.hidden_size, args.head_dim
        self.n_heads = args.num_attention_heads
        self.n_kv_heads = args.num_key_value_heads
        self.scale = head_dim**-0.5
        self.q_proj = nn.Linear(dim, self.n_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(dim, self.n_kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(dim, self.n_kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * head_dim, dim, bias=False)
        self.q_norm = nn.RMSNorm(head_dim, eps=args.rms_norm_eps)
        self.k_norm = nn.RMSNorm(head_dim, eps=args.rms_norm_eps)

    def __call__(self, x: mx.array, rotate: Rotation, mask: Any, cache: Any, kernels: Kernels) -> mx.array:
        B, L, _ = x.shape
        queries, keys, values = kernels.linears((self.q_proj, self.k_proj, self.v_proj), x)
        queries = kernels.rotated_heads(self.q_norm, queries, self.n_heads, rotate)
        keys = kernels.rotated_heads(self.k_norm, keys, self.n_kv_heads, rotate)
        values = values.reshape(B, L, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
        if cache is not None:
            keys, values = cache.update_and_fetch(keys, values)
        return kernels.linear(self.o_proj, kernels.attention(queries, keys, values, cache, self.scale, mask))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden_dim, bias=False)
        self.down_proj = nn.Linear(hidden_dim, dim, bias=False)
        self.up_proj = nn.Linear(dim, hidden_dim, bias=False)

    def __call__(self, x: mx.array, kernels: Kernels) -> mx.array:
        hidden = kernels.swiglu(*kernels.linears((self.gate_proj, self.up_proj), x))
        return kernels.linear(self.down_proj, hidden)


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.self_attn = Attention(args)
        self.mlp = MLP(args.hidden_size, args.intermediate_size)
        self.input_layernorm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)
        self.post_attention_layernorm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)

    def __call__(self, x: mx.array, rotate: Rotation, mask: Any, cache: Any, kernels: Kernels) -> mx.array:
        h = x + self.self_attn(kernels.rms_norm(self.input_layernorm, x), rotate, mask, cache, kernels)
        return h + self.mlp(kernels.rms_norm(self.post_attention_layernorm, h), kernels)


class Qwen3Model(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = [TransformerBlock(args) for _ in range(args.num_hidden_layers)]
        self.norm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)

    def __call__(self, inputs: mx.array, rotate: Rotation, cache: list[Any], kernels: Kernels) -> mx.array:
        h = self.embed_tokens(inputs)
        mask = create_attention_mask(h, cache[0])
        for layer, layer_cache in zip(self.layers, cache):
            h = layer(h, rotate, mask, layer_cache, kernels)
        return kernels.rms_norm(self.norm, h)


class Model(nn.Module):
    """Qwen3 for causal LM; called as mlx-lm's models are, model(inputs, cache)."""

    def __init__(self, args: ModelArgs, kernels: Optional[Kernels] = None):
        super().__init__()
        self.args = args
        self.model_type = args.model_type
        self.model = Qwen3Model(args)
        if not args.tie_word_embeddings:
            self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)
        # Every layer rotates alike: one RoPE serves them all (it has no parameters).
        self.rope = initialize_rope(args.head_dim, base=args.rope_theta, traditional=False,
                                    scaling_config=args.rope_scaling,
                                    max_position_embeddings=args.max_position_embeddings)
        self.kernels = kernels or Kernels()

    def __call__(self, inputs: mx.array, cache: Optional[list[Any]] = None) -> mx.array:
        cache = cache if cache is not None else [None] * len(self.layers)
        offset = cache[0].offset if cache[0] is not None else 0
        rotate = self.kernels.rotation(self.rope, offset, inputs.shape[1], self.model.embed_tokens.weight.dtype)
        h = self.model(inputs, rotate, cache, self.kernels)
        head = self.model.embed_tokens if self.args.tie_word_embeddings else self.lm_head
        return self.kernels.linear(head, h)

    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        if self.args.tie_word_embeddings:
            weights.pop("lm_head.weight", None)
        return weights

    @property
    def layers(self) -> list[TransformerBlock]:
        return self.model.layers
