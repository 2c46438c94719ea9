"""The tiny model trainer's optimizers: with `--optimizer muon`, Muon takes
exactly the transformer layers' weight matrices and AdamW everything else,
and one step of the pair moves every parameter."""

from __future__ import annotations

import torch

from scripts.train_tiny import make_model, make_optimizer

LAYERS = 2
# Written out by hand from Qwen3's module names, not derived from the model.
LAYER_MATRICES = {
    f"model.layers.{layer}.{name}.weight"
    for layer in range(LAYERS)
    for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                 "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
}


def small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return make_model(hidden=32, layers=LAYERS, ffn=64, heads=4, kv_heads=2)


def names_in(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> set[str]:
    ids = {id(p) for group in optimizer.param_groups for p in group["params"]}
    return {name for name, p in model.named_parameters() if id(p) in ids}


def test_muon_takes_the_layer_matrices_and_adamw_the_rest():
    model = small_model()
    adamw, muon = make_optimizer(model, "muon", 1e-3).optimizers
    assert isinstance(adamw, torch.optim.AdamW) and isinstance(muon, torch.optim.Muon)
    assert names_in(model, muon) == LAYER_MATRICES
    everything = {name for name, _ in model.named_parameters()}
    assert names_in(model, adamw) == everything - LAYER_MATRICES
    assert {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"} <= names_in(model, adamw)


def test_adamw_alone_takes_every_parameter():
    model = small_model()
    (adamw,) = make_optimizer(model, "adamw", 1e-3).optimizers
    assert names_in(model, adamw) == {name for name, _ in model.named_parameters()}


def test_one_step_of_muon_and_adamw_moves_every_parameter():
    model = small_model()
    optimizer = make_optimizer(model, "muon", 1e-2)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    ids = torch.tensor([[12, 1, 11, 2, 11, 3, 11, 4, 11, 13]])
    optimizer.zero_grad()
    model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    optimizer.step()
    unchanged = [name for name, p in model.named_parameters() if torch.equal(p, before[name])]
    assert unchanged == []
