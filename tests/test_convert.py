"""The HF -> MLX converter on the committed checkpoints and on damaged copies."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from safetensors.numpy import load_file as numpy_load_file

import nextterm_mlx.convert.converter as converter
from conftest import FIXTURES
from nextterm_mlx.convert.converter import convert_checkpoint
from nextterm_mlx.errors import UserError


def copy_fixture(tmp_path: Path, name: str = "untied-v5") -> Path:
    return Path(shutil.copytree(FIXTURES / name, tmp_path / f"src-{name}"))


def test_mlx_lm_loads_the_folder_and_its_tokenizer(converted):
    from mlx_lm import load

    model, tokenizer = load(str(converted["untied-v4"]))
    assert tokenizer.encode("1,2,3,", add_special_tokens=False) == [1, 11, 2, 11, 3, 11]
    assert tokenizer.encode("-12,", add_special_tokens=False) == [10, 1, 2, 11]
    assert tokenizer.decode([1, 11, 10, 2, 11]) == "1,-2,"
    assert not set(tokenizer.eos_token_ids) & set(range(10)), tokenizer.eos_token_ids
    assert set(tokenizer.eos_token_ids) == {11, 13, 14}


@pytest.mark.parametrize("name,rope_theta,eps", [("untied-v4", 50000.0, 1e-5), ("tied-v5", 1e6, 1e-6)])
def test_config_values_come_from_the_checkpoint(converted, name, rope_theta, eps):
    config = json.loads((converted[name] / "config.json").read_text())
    assert config["rope_theta"] == rope_theta
    assert config["rms_norm_eps"] == eps
    assert config["tie_word_embeddings"] == (name == "tied-v5")


def test_tied_checkpoint_has_no_separate_head(converted):
    untied = mx.load(str(converted["untied-v5"] / "model.safetensors"))
    tied = mx.load(str(converted["tied-v5"] / "model.safetensors"))
    assert "lm_head.weight" in untied and "lm_head.weight" not in tied


def test_meta_records_source_checksums(converted):
    meta = json.loads((converted["untied-v4"] / "nextterm_meta.json").read_text())
    for name in ("config.json", "model.safetensors", "oeis_checkpoint_meta.json"):
        data = (FIXTURES / "untied-v4" / name).read_bytes()
        assert meta["source_files"][name] == hashlib.sha256(data).hexdigest()
    assert meta["source_meta"] == json.loads((FIXTURES / "untied-v4" / "oeis_checkpoint_meta.json").read_text())
    assert meta["dtype"] == "bfloat16"
    for name, digest in meta["files"].items():
        assert hashlib.sha256((converted["untied-v4"] / name).read_bytes()).hexdigest() == digest


def test_float32_weights_are_the_bf16_weights_exactly(tmp_path):
    target = convert_checkpoint(FIXTURES / "untied-v5", tmp_path / "f32", dtype="float32")
    ours = numpy_load_file(str(target / "model.safetensors"))
    source = mx.load(str(FIXTURES / "untied-v5" / "model.safetensors"))
    assert ours.keys() == source.keys()
    for name, array in ours.items():
        assert array.dtype == np.float32
        # bf16 -> f32 is exact: the f32 value's top 16 bits are the bf16 bits.
        bf16_bits = np.array(source[name].view(mx.uint16))
        np.testing.assert_array_equal(array.view(np.uint32) >> 16, bf16_bits.astype(np.uint32))
        assert not (array.view(np.uint32) & 0xFFFF).any()


def edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda f: edit_config(f, model_type="llama", architectures=["LlamaForCausalLM"]), "not a Qwen3"),
        (lambda f: edit_config(f, model_type="llama", architectures=["Qwen3ForCausalLM"]),
         r"says model_type 'llama' but architectures \['Qwen3ForCausalLM'\], which disagree"),
        (lambda f: edit_config(f, model_type="qwen3", architectures=["LlamaForCausalLM"]),
         r"says model_type 'qwen3' but architectures \['LlamaForCausalLM'\], which disagree"),
        (lambda f: edit_config(f, vocab_size=151936), "vocab_size 151936"),
        (lambda f: (f / "config.json").unlink(), "config.json is missing"),
        (lambda f: (f / "model.safetensors").rename(f / "pytorch_model.bin"), "pickle"),
        (lambda f: edit_config(f, intermediate_size=256), "shape"),
        (lambda f: edit_config(f, num_hidden_layers=3), "lacks"),
        (lambda f: edit_config(f, num_hidden_layers=1), "does not use"),
    ],
)
def test_bad_checkpoints_are_refused(tmp_path, damage, message):
    source = copy_fixture(tmp_path)
    damage(source)
    with pytest.raises(UserError, match=message):
        convert_checkpoint(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_disagreeing_model_type_is_one_line_from_the_command(tmp_path, capsys):
    from nextterm_mlx.cli import main

    source = copy_fixture(tmp_path)
    edit_config(source, model_type="llama", architectures=["Qwen3ForCausalLM"])
    with pytest.raises(SystemExit) as exit:
        main(["convert", str(source), str(tmp_path / "out")])
    out, err = capsys.readouterr()
    assert exit.value.code == 2 and out == "" and err.count("\n") == 1 and "disagree" in err, err
    assert not (tmp_path / "out").exists()


def test_existing_target_needs_force(tmp_path, converted):
    target = tmp_path / "out"
    target.mkdir()
    with pytest.raises(UserError, match="--force"):
        convert_checkpoint(FIXTURES / "untied-v5", target)
    convert_checkpoint(FIXTURES / "untied-v5", target, force=True)
    assert (target / "nextterm_meta.json").exists()


def test_target_inside_source_is_refused(tmp_path):
    source = copy_fixture(tmp_path)
    with pytest.raises(UserError, match="inside the source"):
        convert_checkpoint(source, source / "mlx")


def test_a_failed_write_leaves_no_target_and_keeps_the_previous(tmp_path, monkeypatch):
    def disk_full(folder):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(converter, "write_tokenizer_files", disk_full)
    with pytest.raises(OSError):
        convert_checkpoint(FIXTURES / "untied-v5", tmp_path / "new")
    assert list(tmp_path.iterdir()) == []

    monkeypatch.undo()
    previous = convert_checkpoint(FIXTURES / "untied-v5", tmp_path / "old")
    before = sorted((p.name, p.read_bytes()) for p in previous.iterdir())
    monkeypatch.setattr(converter, "write_tokenizer_files", disk_full)
    with pytest.raises(OSError):
        convert_checkpoint(FIXTURES / "untied-v4", previous, force=True)
    assert sorted((p.name, p.read_bytes()) for p in previous.iterdir()) == before
    assert [p.name for p in tmp_path.iterdir()] == ["old"]
