"""A NextTerm checkpoint as a GGUF file, for llama.cpp to run beside nextterm-mlx.

    python scripts/gguf_export.py HF_CHECKPOINT OUT.gguf [--type f32|bf16|q8_0]

Needs the `gguf` package (`pip install gguf`). The file is what llama.cpp's
own convert_hf_to_gguf.py writes for a Qwen3 model: architecture qwen3, the
HF tensors renamed by the gguf package's own map and none permuted (llama.cpp
rotates qwen3's queries and keys in the split-half basis, as transformers
does), norms in float32, and `output.weight` when the checkpoint has an
untied `lm_head`. Q8_0 quantizes the layers' products; the embedding and the
head (16 x hidden each) stay bfloat16, as nextterm-mlx's 8-bit conversion
leaves them unquantized.

llama.cpp loads no model without a vocabulary, so the 16 tokens are written
as a SentencePiece ("llama") one; a GPT-2 one would need a newline token.
Whoever runs the file feeds token ids, never text.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

try:
    import gguf
except ImportError:  # said in one line when a file is asked for
    gguf = None

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nextterm_mlx.errors import UserError  # noqa: E402
from nextterm_mlx.vocab import BOS, EOS, PAD, RESERVED, TOKEN_STRINGS  # noqa: E402

TYPES = ("f32", "bf16", "q8_0")
INSTALL_HINT = "pip install gguf"


def write_gguf(checkpoint: Path, out: Path, kind: str) -> Path:
    """Write the HF checkpoint folder `checkpoint` to `out` with its products stored as `kind`."""
    import mlx.core as mx

    from nextterm_mlx.convert.hf_checkpoint import load_weights, mlx_config, read_config, weight_files

    if gguf is None:
        raise UserError(f"writing GGUF needs the gguf package: {INSTALL_HINT}")
    if kind not in TYPES:
        raise UserError(f"GGUF type {kind!r} is not one of {', '.join(TYPES)}")
    if not out.parent.is_dir():
        raise UserError(f"{out.parent} is not a folder; give an output path in an existing folder")

    # mlx_config fills what config.json leaves out with transformers' defaults,
    # so that llama.cpp builds the model nextterm-mlx builds (the dtype it
    # records is not read here).
    config = mlx_config(read_config(checkpoint), "bfloat16")
    weights = load_weights(weight_files(checkpoint))
    arch = gguf.MODEL_ARCH.QWEN3
    names = gguf.get_tensor_name_map(arch, config["num_hidden_layers"])
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "bf16": gguf.LlamaFileType.MOSTLY_BF16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[kind]

    writer = gguf.GGUFWriter(out, gguf.MODEL_ARCH_NAMES[arch])
    writer.add_name(f"NextTerm checkpoint {checkpoint.name}")
    writer.add_file_type(file_type)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_key_length(config["head_dim"])
    writer.add_value_length(config["head_dim"])
    writer.add_rope_freq_base(config["rope_theta"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    add_vocabulary(writer)

    for hf_name, array in sorted(weights.items()):
        name = names.get_name(hf_name, try_suffixes=(".weight",))
        if name is None:
            raise UserError(f"{checkpoint}: tensor {hf_name!r} has no qwen3 name in GGUF")
        data = np.array(array.astype(mx.float32))
        qtype = stored_type(name, data.ndim, kind)
        if qtype != gguf.GGMLQuantizationType.F32:
            data = gguf.quants.quantize(data, qtype)
        writer.add_tensor(name, data, raw_dtype=qtype)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def stored_type(name: str, ndim: int, kind: str) -> "gguf.GGMLQuantizationType":
    """How one tensor is stored: norms in float32 whatever the file type, as
    llama.cpp's converter keeps them."""
    types = gguf.GGMLQuantizationType
    if ndim == 1 or kind == "f32":
        return types.F32
    if kind == "q8_0" and name not in ("token_embd.weight", "output.weight"):
        return types.Q8_0
    return types.BF16


def add_vocabulary(writer: "gguf.GGUFWriter") -> None:
    """NextTerm's 16 tokens; BOS, EOS and PAD are control tokens, and the
    reserved one stands in for the unknown token SentencePiece needs."""
    control = {BOS, EOS, PAD}
    types = [gguf.TokenType.CONTROL if i in control else gguf.TokenType.UNKNOWN if i == RESERVED
             else gguf.TokenType.NORMAL for i in range(len(TOKEN_STRINGS))]
    writer.add_tokenizer_model("llama")
    writer.add_token_list(list(TOKEN_STRINGS))
    writer.add_token_scores([0.0] * len(TOKEN_STRINGS))
    writer.add_token_types(types)
    writer.add_bos_token_id(BOS)
    writer.add_eos_token_id(EOS)
    writer.add_pad_token_id(PAD)
    writer.add_unk_token_id(RESERVED)
    writer.add_add_bos_token(False)  # the prompt ids carry their own BOS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="an HF checkpoint folder (scripts/random_checkpoint.py makes one)")
    parser.add_argument("out", type=Path)
    parser.add_argument("--type", choices=TYPES, default="bf16")
    args = parser.parse_args()
    try:
        write_gguf(args.checkpoint, args.out, args.type)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(args.out)


if __name__ == "__main__":
    main()
