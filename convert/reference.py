"""Reference outputs from transformers on CPU: what nextterm-mlx must reproduce.

For each case it runs the model card's call, in float32,

    model.generate(ids, max_new_tokens=192, do_sample=False,
                   eos_token_id=[11, 13, 14], pad_token_id=14)

and records the prompt ids, the generated tokens and their summed log-probabilities, the logits at the prompt's
last position, and the smallest top-1/top-2 logit gap over every generated
step (a gap near zero means argmax may flip on rounding). A case with
"terms": N > 1 continues N terms by calling generate again on the prompt
extended with everything generated so far, while each term is a
well-formed integer ended by a separator.

    python -m nextterm_mlx.convert.reference CHECKPOINT CASES.json OUT.json

CASES.json is a list of {"terms": [...], "max_new_tokens": 192, "continue": 1}.
This is the only module that imports torch and transformers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from nextterm_mlx.vocab import MAX_NEW_TOKENS, PAD, SEP, STOP_TOKENS, decode_term, encode_prompt


def load_reference_model(checkpoint: Path):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(
        checkpoint, dtype=torch.float32, trust_remote_code=False, use_safetensors=True
    )
    return model.eval()


def run_case(model, case: dict[str, Any]) -> dict[str, Any]:
    import torch

    max_new_tokens = case.get("max_new_tokens", MAX_NEW_TOKENS)
    prompt = encode_prompt(case["terms"])
    ids = list(prompt)
    generated: list[list[int]] = []
    logprobs: list[float] = []
    first_logits = None
    min_margin = float("inf")
    for _ in range(case.get("continue", 1)):
        with torch.no_grad():
            out = model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=list(STOP_TOKENS),
                pad_token_id=PAD,
                output_logits=True,
                return_dict_in_generate=True,
            )
        tokens = out.sequences[0, len(ids) :].tolist()
        generated.append(tokens)
        logprob = 0.0
        for token, step_logits in zip(tokens, out.logits):
            top2 = torch.topk(step_logits[0].float(), 2).values
            min_margin = min(min_margin, (top2[0] - top2[1]).item())
            logprob += torch.log_softmax(step_logits[0].double(), dim=-1)[token].item()
        logprobs.append(logprob)
        if first_logits is None:
            first_logits = out.logits[0][0].float().tolist()
        ids += tokens
        if tokens[-1] != SEP or decode_term(tokens[:-1]) is None:
            break
    return {
        "terms": case["terms"],
        "prompt": prompt,
        "max_new_tokens": max_new_tokens,
        "continue": case.get("continue", 1),
        "generated": generated,
        "logprobs": logprobs,
        "logits": first_logits,
        "min_margin": min_margin,
    }


def reference_outputs(checkpoint: Path, cases: list[dict[str, Any]]) -> dict[str, Any]:
    import torch
    import transformers

    model = load_reference_model(checkpoint)
    return {
        "checkpoint": Path(checkpoint).name,
        "runtime": f"transformers {transformers.__version__}, torch {torch.__version__}, CPU float32",
        "cases": [run_case(model, case) for case in cases],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("cases", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    cases = json.loads(args.cases.read_text())
    args.out.write_text(json.dumps(reference_outputs(args.checkpoint, cases), indent=1))


if __name__ == "__main__":
    main()
