"""Parity check on a random checkpoint of the full deduced NextTerm-440M shape.

Makes (once) a random 440M-shape checkpoint saved by transformers in bf16,
converts it with `nextterm-mlx convert` (timed, peak RSS measured in the
child process), then decodes the same prompts with transformers float32 on
CPU and with nextterm-mlx float32, and compares the tokens.

    python scripts/check_full_shape.py WORK_DIR [--prompts 10] [--max-new-tokens 192]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nextterm_mlx.memory import peak_rss_bytes  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("--prompts", type=int, default=10)
    parser.add_argument("--max-new-tokens", type=int, default=192)
    args = parser.parse_args()

    hf_dir, mlx_dir = args.work / "hf-440m", args.work / "mlx-440m"
    if not (hf_dir / "config.json").exists():
        from scripts.random_checkpoint import make_random_checkpoint

        make_random_checkpoint(hf_dir, "440m", seed=0)

    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "nextterm_mlx", "convert", str(hf_dir), str(mlx_dir), "--force"], check=True)
    convert_seconds = time.perf_counter() - started
    convert_peak_gb = peak_rss_bytes(resource.RUSAGE_CHILDREN) / 2**30

    rng = random.Random(0)
    cases = [{"terms": [rng.randint(-999, 9999) for _ in range(rng.randint(1, 40))],
              "max_new_tokens": args.max_new_tokens} for _ in range(args.prompts)]

    from nextterm_mlx.convert.reference import reference_outputs

    started = time.perf_counter()
    reference = reference_outputs(hf_dir, cases)["cases"]
    transformers_seconds = time.perf_counter() - started

    import nextterm_mlx

    predictor = nextterm_mlx.load(mlx_dir, dtype="float32", max_new_tokens=args.max_new_tokens)
    started = time.perf_counter()
    mlx_tokens = [predictor.predict(case["terms"]).tokens for case in cases]
    mlx_seconds = time.perf_counter() - started

    equal = sum(ref["generated"][0] == tokens for ref, tokens in zip(reference, mlx_tokens))
    report = {
        "prompts": len(cases),
        "equal_token_streams": equal,
        "generated_tokens": sum(len(t) for t in mlx_tokens),
        "min_margin": min(ref["min_margin"] for ref in reference),
        "convert_seconds": round(convert_seconds, 1),
        "convert_peak_rss_gb": round(convert_peak_gb, 2),
        "transformers_fp32_seconds": round(transformers_seconds, 1),
        "mlx_fp32_seconds": round(mlx_seconds, 1),
    }
    for ref, tokens in zip(reference, mlx_tokens):
        if ref["generated"][0] != tokens:
            print("mismatch", ref["terms"], ref["generated"][0], tokens, "margin", ref["min_margin"])
    print(json.dumps(report, indent=1))
    sys.exit(0 if equal == len(cases) else 1)


if __name__ == "__main__":
    main()
