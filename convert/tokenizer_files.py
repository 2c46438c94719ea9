"""tokenizer.json and tokenizer_config.json for NextTerm's 16 tokens.

The model needs no tokenizer (nextterm_mlx.vocab maps terms to ids), but an
MLX folder without one makes `mlx_lm.load` build an empty tokenizer whose
stop set holds token 0, so mlx-lm's own generate would stop on the digit 0.
With these files `mlx_lm.load(folder)` works and text prompts like "1,2,3,"
encode to the model's ids.

The model reads every prompt after BOS, and without it answers wrongly, so
the tokenizer puts BOS in front by itself, as Llama's tokenizers do: a
post-processor adds it whenever special tokens are asked for (mlx-lm's
generate and server ask for them on a plain text prompt; mlx-lm's generate
leaves them out when the text already starts with "<bos>").
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from nextterm_mlx.vocab import BOS, EOS, PAD, RESERVED, TOKEN_STRINGS

SPECIAL_IDS = (BOS, EOS, PAD, RESERVED)


def write_tokenizer_files(folder: Path) -> None:
    vocab = {text: token_id for token_id, text in enumerate(TOKEN_STRINGS)}
    unknown = TOKEN_STRINGS[RESERVED]
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=unknown))
    # One token per character; white space only separates.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex("."), behavior="isolated")]
    )
    tokenizer.decoder = decoders.Fuse()
    tokenizer.add_special_tokens([AddedToken(TOKEN_STRINGS[i], special=True) for i in SPECIAL_IDS])
    bos = TOKEN_STRINGS[BOS]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, BOS)]
    )
    tokenizer.save(str(folder / "tokenizer.json"))

    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": TOKEN_STRINGS[BOS],
        "eos_token": TOKEN_STRINGS[EOS],
        "pad_token": TOKEN_STRINGS[PAD],
        "unk_token": unknown,
        "add_bos_token": True,
        "add_eos_token": False,
        "model_max_length": 4096,
        "clean_up_tokenization_spaces": False,
    }
    with open(folder / "tokenizer_config.json", "w") as f:
        json.dump(tokenizer_config, f, indent=2)
