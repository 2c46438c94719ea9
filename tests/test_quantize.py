"""Quantized conversion: mlx-lm's format, what stays unquantized, and the CPU path."""

from __future__ import annotations

import json
import subprocess

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx_lm import load as mlx_lm_load

import nextterm_mlx
from conftest import FIXTURES, reference
from nextterm_mlx.convert.converter import convert_checkpoint
from nextterm_mlx.convert.quantize import quantization_from_options
from nextterm_mlx import settings
from nextterm_mlx.settings import Settings

SOURCE = FIXTURES / "untied-v5"  # 2 layers, hidden 64, FFN 192


def quantized(tmp_path, **options):
    q = quantization_from_options(options.get("bits"), options.get("group_size"), options.get("mode"),
                                  options.get("recipe"))
    return convert_checkpoint(SOURCE, tmp_path / q.tag, quantization=q)


@pytest.mark.parametrize("options,bits", [({"bits": 8}, 8), ({"bits": 4, "group_size": 32}, 4),
                                          ({"mode": "mxfp4"}, 4)])
def test_mlx_lm_loads_it_with_embedding_and_head_unquantized(tmp_path, options, bits):
    folder = quantized(tmp_path, **options)
    model, _ = mlx_lm_load(str(folder))
    assert type(model.model.embed_tokens) is nn.Embedding
    assert type(model.lm_head) is nn.Linear
    for layer in model.model.layers:
        for linear in (layer.self_attn.q_proj, layer.self_attn.v_proj, layer.mlp.down_proj):
            assert isinstance(linear, nn.QuantizedLinear) and linear.bits == bits
    config = json.loads((folder / "config.json").read_text())
    assert config["quantization"]["bits"] == bits
    meta = json.loads((folder / "nextterm_meta.json").read_text())
    assert meta["quantization"]["bits"] == bits


def test_mixed_recipe_gives_8_bits_where_the_rule_says(tmp_path):
    # With 2 layers the rule (first and last eighth, every third between)
    # picks layer 1 only: index >= 7 * 2 // 8.
    model, _ = mlx_lm_load(str(quantized(tmp_path, recipe="mixed_4_8")))
    first, last = model.model.layers
    assert (first.self_attn.v_proj.bits, first.mlp.down_proj.bits) == (4, 4)
    assert (last.self_attn.v_proj.bits, last.mlp.down_proj.bits) == (8, 8)
    assert last.self_attn.q_proj.bits == 4 and last.mlp.up_proj.bits == 4


def test_layers_the_group_size_does_not_divide_stay_unquantized_and_listed(tmp_path):
    # Inputs are 64 (hidden) for six projections and 192 (FFN) for down_proj:
    # 128 divides neither.
    folder = quantized(tmp_path, bits=4, group_size=128)
    meta = json.loads((folder / "nextterm_meta.json").read_text())
    names = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
             "mlp.gate_proj", "mlp.down_proj", "mlp.up_proj"]
    assert meta["left_unquantized"] == sorted(f"model.layers.{i}.{n}" for i in (0, 1) for n in names)
    model, _ = mlx_lm_load(str(folder))
    assert not any(isinstance(m, nn.QuantizedLinear) for m in model.modules())


@pytest.mark.parametrize("options", [{"q_bits": 8}, {"q_bits": 4, "q_group_size": 32}, {"q_recipe": "mixed_4_8"}])
def test_dequantized_on_cpu_gives_the_tokens_of_the_quantized_weights(options, monkeypatch):
    # The weights the kernel would read as stored (8 bits) are dequantized too.
    monkeypatch.setattr(settings, "from_environment", lambda: Settings(stored_weights=False))
    dequantized = nextterm_mlx.load(SOURCE, **options)
    kept = nextterm_mlx.load(SOURCE, **options, keep_quantized=True)
    assert not any(isinstance(m, nn.QuantizedLinear) for m in dequantized.model.modules())
    assert any(isinstance(m, nn.QuantizedLinear) for m in kept.model.modules())
    cases = [c for c in reference("untied-v5")["cases"] if c["max_new_tokens"] <= 16][:20]
    for case in cases:
        dequantized.max_new_tokens = kept.max_new_tokens = case["max_new_tokens"]
        assert dequantized.predict(case["terms"]).tokens == kept.predict(case["terms"]).tokens


def test_quantized_variants_are_cached_beside_the_source(tmp_path):
    env_cache = ["--cache-dir", str(tmp_path / "c")]
    for options in ([], ["--q-bits", "8"], ["--q-bits", "4", "--q-group-size", "32"]):
        done = subprocess.run(["nextterm-mlx", "predict", "--model", str(SOURCE), *options, *env_cache, "1", "2"],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    done = subprocess.run(["nextterm-mlx", "models", *env_cache], capture_output=True, text=True)
    variants = sorted(line.split()[3] for line in done.stdout.splitlines())
    assert variants == ["bfloat16", "q4g32", "q8g64"]


@pytest.mark.parametrize("options,message", [(["--q-group-size", "32"], "needs --q-bits"),
                                             (["--q-mode", "mxfp4", "--q-group-size", "64"], "use 32"),
                                             (["--q-bits", "8", "--q-recipe", "mixed_4_8"], "not both")])
def test_bad_quantization_options_are_one_line(tmp_path, options, message):
    done = subprocess.run(["nextterm-mlx", "convert", str(SOURCE), str(tmp_path / "out"), *options],
                          capture_output=True, text=True)
    assert done.returncode == 2 and message in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert not (tmp_path / "out").exists()


def test_no_8_bit_weight_moves_more_than_one_step(tmp_path):
    # Affine quantization puts each weight on one of 256 levels spaced
    # |scale| apart; MLX shifts the levels so that zero is one of them, which
    # can cost up to a whole step. Scales rounded to bfloat16 (what quantizing
    # a bfloat16 model gives) move level 255 by up to another half step.
    checkpoint = {name: np.asarray(w.astype(mx.float32)) for name, w in mx.load(str(SOURCE / "model.safetensors")).items()}
    model, _ = mlx_lm_load(str(quantized(tmp_path, bits=8)))
    for name, module in model.named_modules():
        if not isinstance(module, nn.QuantizedLinear):
            continue
        restored = mx.dequantize(module.weight, module.scales, module.biases, module.group_size, module.bits)
        moved = np.abs(np.asarray(restored) - checkpoint[f"{name}.weight"])
        step = np.repeat(np.abs(np.asarray(module.scales)), module.group_size, axis=-1)  # MLX's can be negative
        assert (moved <= step * (1 + 1e-5)).all(), name


@pytest.mark.parametrize("options", [{"bits": 8}, {"bits": 4}, {"recipe": "mixed_4_8"}])
def test_scales_are_float32_at_8_bits_and_the_rest_keeps_its_dtype(tmp_path, options):
    model, _ = mlx_lm_load(str(quantized(tmp_path, **options)))
    for module in model.modules():
        if isinstance(module, nn.QuantizedLinear):
            expected = mx.float32 if module.bits == 8 else mx.bfloat16
            assert module.scales.dtype == expected and module.biases.dtype == expected
    assert model.model.norm.weight.dtype == mx.bfloat16 and model.lm_head.weight.dtype == mx.bfloat16
