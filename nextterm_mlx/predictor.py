"""The Python API: load a model once, then predict next terms."""

from __future__ import annotations

import math
import sys
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

import mlx.nn as nn
from .batch import decode_batch
from .beam import Candidate, Candidates, beam_search_batch, greedy_candidates
from .decode import DEFAULT_MAX_NEW_TOKENS, DecodeStats, Prediction, processors_for
from .device import use_device
from .errors import LongPromptWarning, UserError
from .loading import load_mlx_folder
from .meta import read_meta
from .resolve import resolve_model
from .score import score_values
from .speculative import SpeculationStats, decode_speculative
from .static_cache import StaticDecoder, decode_one
from .terms import check_terms
from .vocab import encode_prompt


# NextTerm-440M was trained on 4,096-token contexts.
TRAINING_CONTEXT = 4096


class Predictor:
    """A loaded NextTerm model that predicts the next terms of integer sequences."""

    def __init__(
        self,
        model: nn.Module,
        config: dict[str, Any],
        path: Path,
        name: str,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        speculate: bool = False,
    ):
        self.model = model
        self.config = config
        self.path = path
        self.name = name
        self.max_new_tokens = max_new_tokens
        # Speculative decoding gives the same predictions; it only changes speed.
        self.speculate = speculate
        self.speculation = SpeculationStats()
        # One compiled decoder, traced once, serves every single-sequence call.
        self.static_decoder: Optional[StaticDecoder] = StaticDecoder(model)

    @property
    def max_positions(self) -> int:
        return self.config["max_position_embeddings"]

    def info(self) -> dict[str, Any]:
        """What is loaded and how it runs: what `nextterm-mlx info` prints."""
        import mlx.core as mx
        import mlx_lm
        from mlx_lm.utils import get_total_parameters

        meta = read_meta(self.path) or {}
        architecture_keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                             "head_dim", "intermediate_size", "vocab_size", "tie_word_embeddings", "rope_theta",
                             "rms_norm_eps", "max_position_embeddings")
        return {
            "model": self.name,
            "path": str(self.path),
            "parameters": get_total_parameters(self.model),
            "config": {k: self.config.get(k) for k in architecture_keys},
            "stored_dtype": meta.get("dtype"),
            # The norms are cast to the dtype the model computes in, whatever the weights' storage.
            "compute_dtype": dtype_name(self.model.model.norm.weight.dtype),
            "weights": weights_in_memory(self.model),
            "quantization": self.config.get("quantization"),
            "source": meta.get("source"),
            "source_meta": meta.get("source_meta"),
            "mlx_version": mx.__version__,
            "mlx_lm_version": mlx_lm.__version__,
            "device": str(mx.default_device()),
            **self.model.kernels.describe(),
            "heap_kept": heap_kept(),
        }

    def predict(self, terms: Sequence[int], strict: bool = False) -> Prediction:
        """The next term of `terms`, e.g. 13 for [1, 1, 2, 3, 5, 8].

        strict: mask the logits so that only a canonical integer can come
        out (off by default: plain greedy decoding is the reference's)."""
        return self.continue_sequence(terms, 1, strict)[0]

    def continue_sequence(self, terms: Sequence[int], n: int, strict: bool = False) -> list[Prediction]:
        """The next `n` terms, each predicted from the sequence extended by the
        ones before it. Stops early, with the reason in the last prediction's
        `stop`, when the model gives no next term."""
        return self.continue_batch([terms], n, strict=strict)[0]

    def continue_batch(
        self,
        sequences: Sequence[Sequence[int]],
        n: int = 1,
        stats: Optional[DecodeStats] = None,
        strict: bool = False,
    ) -> list[list[Prediction]]:
        """`continue_sequence` for several sequences at once, decoded in
        batches: faster per sequence, same predictions (on a Linux CPU the
        same numbers too, log-probabilities included). With `speculate`, the
        sequences are decoded one after another instead (each keeps its own
        number of drafts), with the same predictions too."""
        if n < 1:
            raise UserError(f"the number of terms to predict must be at least 1, not {n}")
        prompts = [self.prompt(terms) for terms in sequences]
        if not prompts:
            return []
        processors = processors_for(strict)
        if self.speculate:
            return [decode_speculative(self.model, prompt, n, self.max_new_tokens, stats, self.speculation, processors)
                    for prompt in prompts]
        # The compiled step chooses its tokens itself: a processor needs the batch path.
        if len(prompts) == 1 and not processors and self.static_decoder is not None:
            return [decode_one(self.static_decoder, prompts[0], n, self.max_new_tokens, stats)]
        return [predictions for part in self._alike_batches(prompts, 1)
                for predictions in decode_batch(self.model, part, n, self.max_new_tokens, stats, processors)]

    def candidates(
        self, terms: Sequence[int], beams: int = 4, top: Optional[int] = None, strict: bool = False
    ) -> Candidates:
        """The `top` (default: `beams`) most likely next terms by beam search
        with `beams` beams, best first, with their probabilities. One beam is
        exactly greedy decoding."""
        return self.candidates_batch([terms], beams, top, strict)[0]

    def candidates_batch(
        self,
        sequences: Sequence[Sequence[int]],
        beams: int = 4,
        top: Optional[int] = None,
        strict: bool = False,
        stats: Optional[DecodeStats] = None,
    ) -> list[Candidates]:
        """`candidates` for several sequences, their hypotheses searched in one batch."""
        if beams < 1:
            raise UserError(f"the number of beams must be at least 1, not {beams}")
        top = beams if top is None else top
        if not 1 <= top <= beams:
            raise UserError(f"top must be between 1 and the number of beams ({beams}), not {top}")
        if beams == 1:
            return [greedy_candidates(p[0]) for p in self.continue_batch(sequences, 1, stats, strict)]
        prompts = [self.prompt(terms) for terms in sequences]
        if not prompts:
            return []
        return [found for part in self._alike_batches(prompts, beams)
                for found in beam_search_batch(self.model, part, beams, top, self.max_new_tokens,
                                               processors_for(strict), stats)]

    def score(self, terms: Sequence[int], values: Sequence[int], strict: bool = False) -> list[Candidate]:
        """The model's log-probability for each of `values` as the next term
        of `terms`, its tokens and the separator included, as beam search
        scores a candidate (teacher-forced: no search, any value)."""
        values = check_terms(values)
        return score_values(self.model, self.prompt(terms), values, processors_for(strict))

    def _alike_batches(self, prompts: list[list[int]], rows_each: int) -> list[list[list[int]]]:
        """The prompts in batches small enough that each is decoded exactly
        as it is alone (see Kernels.alike_rows), each taking up to
        `rows_each` rows of a step."""
        alike_rows = self.model.kernels.alike_rows()
        size = len(prompts) if alike_rows is None else max(1, alike_rows // rows_each)
        return [prompts[start : start + size] for start in range(0, len(prompts), size)]

    def prompt(self, terms: Sequence[int]) -> list[int]:
        """The token ids for `terms`, refused if longer than the model can read."""
        terms = check_terms(terms)
        # Digits from bit lengths: a term longer than the model can read is
        # refused before it is written out.
        digits = max(abs(t).bit_length() for t in terms) * math.log10(2)
        if digits < self.max_positions:
            try:
                prompt = encode_prompt(terms)
            except ValueError:  # beyond Python's int-to-text limit (sys.set_int_max_str_digits)
                digits = self.max_positions
        if digits >= self.max_positions or len(prompt) > self.max_positions:
            raise UserError(
                f"the sequence is longer than the model's limit of {self.max_positions} tokens "
                "(max_position_embeddings); give fewer or shorter terms"
            )
        if len(prompt) > TRAINING_CONTEXT:
            warnings.warn(f"the sequence is {len(prompt)} tokens long, more than the {TRAINING_CONTEXT} "
                          "NextTerm-440M was trained on; predictions may be poor", LongPromptWarning)
        return prompt


def heap_kept() -> bool:
    """Whether this process keeps freed memory in glibc's heap (Linux only)."""
    if not sys.platform.startswith("linux"):
        return False
    from .cpu import heap

    return heap.kept


def load(
    model: Optional[str | Path] = None,
    *,
    checkpoint: Optional[str] = None,
    repo: Optional[str] = None,
    revision: Optional[str] = None,
    dtype: Optional[str] = None,
    device: Optional[str] = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    cache_dir: Optional[str | Path] = None,
    q_bits: Optional[int] = None,
    q_group_size: Optional[int] = None,
    q_mode: Optional[str] = None,
    q_recipe: Optional[str] = None,
    keep_quantized: bool = False,
    speculate: bool = False,
) -> Predictor:
    """Load a model for prediction.

    model: a published checkpoint's name ("final_latest", "best_val", ...),
        a NextTerm checkpoint folder in HF format, or a folder made by
        `nextterm-mlx convert`. None: NextTerm-440M's `checkpoint` (default
        final_latest) from `repo` at `revision`. A checkpoint is downloaded
        and converted on first use, then loaded from the cache, offline too.
    dtype: "float32" (the default, the reference's), "bfloat16" or
        "float16" to compute in.
    device: "cpu" or "gpu" to compute on, for this process; None: the one
        NEXTTERM_MLX_DEVICE names, else MLX's default (the GPU on a Mac).
    max_new_tokens: the token budget for one term (the model card's 192).
    cache_dir: where converted models are kept (default ~/.cache/nextterm-mlx,
        or NEXTTERM_MLX_CACHE).
    q_bits, q_group_size, q_mode, q_recipe: use a quantized variant (4 or
        8 bits; group 32, 64 or 128; affine, mxfp4, mxfp8 or nvfp4; or the
        mixed_4_8 recipe), converted from the same source and cached.
    keep_quantized: on a CPU, run quantized weights as they are instead of
        dequantizing them to float32 (MLX's CPU quantized matmul is slow).
    speculate: decode with drafts from prompt lookup, verified so that the
        predictions are exactly greedy decoding's; one sequence at a time,
        even when several are given together.
    """
    from .convert.quantize import quantization_from_options

    use_device(device)
    if max_new_tokens < 1:
        raise UserError(f"max_new_tokens must be at least 1, not {max_new_tokens}")
    quantization = quantization_from_options(q_bits, q_group_size, q_mode, q_recipe)
    resolved = resolve_model(model, checkpoint=checkpoint, repo=repo, revision=revision,
                             quantization=quantization, cache_dir=cache_dir)
    mlx_model, config = load_mlx_folder(resolved.path, dtype, keep_quantized)
    return Predictor(mlx_model, config, resolved.path, resolved.name, max_new_tokens, speculate)


def dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("mlx.core.")


def weights_in_memory(model: nn.Module) -> str:
    """How the Linear layers' weights are held: their dtypes, or their bits when quantized."""
    kinds = {f"{layer.bits}-bit" if isinstance(layer, nn.QuantizedLinear) else dtype_name(layer.weight.dtype)
             for _, layer in model.named_modules() if isinstance(layer, (nn.Linear, nn.QuantizedLinear))}
    return ", ".join(sorted(kinds))
