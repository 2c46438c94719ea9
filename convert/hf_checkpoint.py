"""Read a NextTerm checkpoint folder as published on Hugging Face.

A folder holds config.json (written by transformers 4.x or 5.x), safetensors
weights and, for the published ones, oeis_checkpoint_meta.json. Everything
here only reads: JSON and safetensors, never pickle, never remote code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlx.core as mx

from nextterm_mlx.dtypes import DTYPES
from nextterm_mlx.errors import UserError
from nextterm_mlx.vocab import BOS, PAD, STOP_TOKENS, VOCAB_SIZE

SOURCE_META_FILE = "oeis_checkpoint_meta.json"

# transformers' Qwen3Config defaults, for keys a config.json may leave out.
QWEN3_DEFAULTS = {
    "head_dim": 128,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "rope_theta": 10000.0,
    "hidden_act": "silu",
    "attention_bias": False,
}

def read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise UserError(f"{path} is missing: {what}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e}); re-download the checkpoint") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} does not hold a JSON object; re-download the checkpoint")
    return data


def read_config(folder: Path) -> dict[str, Any]:
    """config.json checked to be a Qwen3 causal LM with NextTerm's 16 tokens."""
    config = read_json(
        folder / "config.json",
        "a NextTerm checkpoint folder holds config.json and safetensors weights",
    )
    model_type, architectures = config.get("model_type"), config.get("architectures") or []
    # Each of the two that is present must name Qwen3: a loader may follow either.
    says_qwen3 = {}
    if model_type is not None:
        says_qwen3["model_type"] = model_type == "qwen3"
    if architectures:
        says_qwen3["architectures"] = "Qwen3ForCausalLM" in architectures
    if not any(says_qwen3.values()):
        found = model_type or architectures or "none"
        raise UserError(
            f"{folder} holds a {found!r} model, not a Qwen3 causal LM; "
            "point to a NextTerm-440M checkpoint folder"
        )
    if not all(says_qwen3.values()):
        raise UserError(
            f"{folder}/config.json says model_type {model_type!r} but architectures {architectures}, "
            "which disagree; a NextTerm checkpoint says qwen3 and Qwen3ForCausalLM: fix config.json "
            "or re-download the checkpoint"
        )
    if config.get("vocab_size") != VOCAB_SIZE:
        raise UserError(
            f"{folder} has vocab_size {config.get('vocab_size')!r}, not NextTerm's "
            f"{VOCAB_SIZE}; point to a NextTerm-440M checkpoint folder"
        )
    if config.get("attention_bias", False):
        raise UserError(f"{folder}/config.json asks for attention_bias, which NextTerm does not use")
    if config.get("hidden_act", "silu") != "silu":
        raise UserError(
            f"{folder}/config.json asks for hidden_act {config['hidden_act']!r}; only silu is supported"
        )
    if rope_type(config) != "default":
        raise UserError(
            f"{folder}/config.json asks for rope type {rope_type(config)!r}; only the default RoPE is supported"
        )
    return config


def rope_type(config: dict[str, Any]) -> str:
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    return rope.get("rope_type") or rope.get("type") or "default"


def mlx_config(hf_config: dict[str, Any], dtype: str) -> dict[str, Any]:
    """The config.json of the converted folder, as mlx-lm's Qwen3 reads it.

    Every architecture value comes from the checkpoint (transformers 4.x puts
    rope_theta at the top level, 5.x under rope_parameters); transformers'
    own defaults fill what it leaves out, so both runtimes build one model.
    """
    # Keys that would make a loader import code from the folder are dropped:
    # nothing from a checkpoint is ever executed.
    dropped = ("torch_dtype", "dtype", "auto_map", "model_file")
    config = {k: v for k, v in hf_config.items() if k not in dropped}
    for key, default in QWEN3_DEFAULTS.items():
        config.setdefault(key, default)
    config["model_type"] = "qwen3"
    config["num_key_value_heads"] = hf_config.get("num_key_value_heads") or hf_config["num_attention_heads"]
    rope_parameters = hf_config.get("rope_parameters") or {}
    config["rope_theta"] = hf_config.get("rope_theta") or rope_parameters.get("rope_theta") or QWEN3_DEFAULTS["rope_theta"]
    config.pop("rope_parameters", None)
    config.pop("rope_scaling", None)
    config["torch_dtype"] = dtype
    # mlx-lm's tokenizer wrapper stops on these: one term, as the model card's call.
    config["eos_token_id"] = list(STOP_TOKENS)
    config["bos_token_id"] = BOS
    config["pad_token_id"] = PAD
    return config


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a checkpoint; pickled weights are refused."""
    files = sorted(folder.glob("*.safetensors"))
    if files:
        return files
    pickles = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt"))
    if pickles:
        raise UserError(
            f"{folder} has only pickle weights ({', '.join(pickles)}), which are never loaded "
            "because unpickling can run code; use a checkpoint with safetensors weights"
        )
    raise UserError(f"{folder} has no .safetensors weights; re-download the checkpoint")


def load_weights(files: list[Path]) -> dict[str, mx.array]:
    """Every tensor of the safetensors files, read by MLX itself (bf16 included)."""
    weights: dict[str, mx.array] = {}
    for path in files:
        try:
            tensors = mx.load(str(path))
        except Exception as e:  # MLX reports a damaged file as a bare RuntimeError or ValueError
            raise UserError(
                f"{path} could not be read as safetensors ({e}); it is truncated or damaged, re-download it"
            ) from None
        repeated = sorted(tensors.keys() & weights.keys())
        if repeated:
            raise UserError(f"tensor {repeated[0]!r} appears in more than one weight file in {path.parent}")
        weights.update(tensors)
    return weights


def checkpoint_dtype(hf_config: dict[str, Any], weights: dict[str, mx.array]) -> str:
    """The checkpoint's own floating dtype: its tensors', else its config's."""
    for array in weights.values():
        for name, dtype in DTYPES.items():
            if array.dtype == dtype:
                return name
    declared = hf_config.get("dtype") or hf_config.get("torch_dtype")
    return declared if declared in DTYPES else "float32"
