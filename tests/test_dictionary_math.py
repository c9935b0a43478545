"""The ReLU dictionary against the math: an exact MLP copy, and the loss by hand."""

from __future__ import annotations

import functools

import pytest
import torch
from safetensors.torch import load_file

from tcx.config import build_node
from tcx.dictionaries.io import load_dictionary, save_dictionary


def test_transcoder_copying_a_relu_mlp_reproduces_its_output(make_cfg):
    cfg = make_cfg()
    lm = build_node(cfg.model, "model").load()
    layer = cfg.layer
    tokens = torch.randint(0, 256, (3, 40), generator=torch.Generator().manual_seed(1))
    hooks = [lm.hook_name("mlp_in", layer), lm.hook_name("mlp_out", layer)]
    acts = lm.run_to(tokens, hooks)
    x, mlp_out = (acts[h].reshape(-1, acts[h].shape[-1]) for h in hooks)

    spec = build_node(cfg.model, "model")
    tc = build_node(cfg.dictionary, "dictionary", d_sae=spec.d_mlp).build(spec.d_model, spec.d_model)
    with torch.no_grad():
        tc.W_enc.copy_(lm.bridge.W_in[layer])
        tc.b_enc.copy_(lm.bridge.b_in[layer])
        tc.W_dec.copy_(lm.bridge.W_out[layer])
        tc.b_dec.copy_(lm.bridge.b_out[layer])
        y = tc(x, mlp_out).y
    assert mlp_out.abs().max() > 0.1  # a real signal, not zeros
    torch.testing.assert_close(y, mlp_out, atol=1e-5, rtol=1e-5)


def test_loss_is_mse_plus_decoder_norm_weighted_l1(make_cfg):
    cfg = build_node(make_cfg("dictionary.l1_coeff=0.25").dictionary, "dictionary", d_sae=5)
    d = cfg.build(3, 2, seed=4)
    gen = torch.Generator().manual_seed(0)
    x, t = torch.randn(7, 3, generator=gen), torch.randn(7, 2, generator=gen)
    out = d(x, t, sparsity_scale=0.5)
    W_enc, b_enc, W_dec, b_dec = (p.detach() for p in (d.W_enc, d.b_enc, d.W_dec, d.b_dec))
    mse = l1 = 0.0
    for row in range(7):
        z = [max(0.0, sum(x[row, i].item() * W_enc[i, j].item() for i in range(3)) + b_enc[j].item())
             for j in range(5)]
        for k in range(2):
            y = sum(z[j] * W_dec[j, k].item() for j in range(5)) + b_dec[k].item()
            mse += (y - t[row, k].item()) ** 2 / 7
        l1 += sum(z[j] * sum(W_dec[j, k].item() ** 2 for k in range(2)) ** 0.5 for j in range(5)) / 7
    assert abs(out.mse.item() - mse) < 1e-5
    assert abs(out.sparsity.item() - l1) < 1e-5
    assert abs(out.loss.item() - (mse + 0.5 * 0.25 * l1)) < 1e-5
    # Rescaling a decoder row while dividing its feature leaves the penalty unchanged.
    with torch.no_grad():
        d.W_dec[0] *= 3.0
        d.W_enc[:, 0] /= 3.0
        d.b_enc[0] /= 3.0
    assert abs(d(x, t).sparsity.item() - l1) < 1e-5


def test_save_load_round_trip(make_cfg, tmp_path):
    d = build_node(make_cfg().dictionary, "dictionary").build(6, 6, seed=3)
    save_dictionary(d, tmp_path, {"model": "tiny"})
    loaded, meta = load_dictionary(tmp_path / "dictionary.safetensors")
    assert meta["model"] == "tiny" and meta["d_sae"] == d.d_sae
    for k, v in d.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_normalised_dictionary_saves_in_model_units_whatever_hooks_it_carries(make_cfg, tmp_path, dtype):
    """Training units (input and target scaled) fold into the saved weights: the loaded dictionary
    maps raw activations to raw outputs as the trained one did. The trained module may carry hooks
    that cannot be deep-copied (`trainer.profiler=pytorch` puts torch's record functions on it)."""
    d = build_node(make_cfg().dictionary, "dictionary").build(6, 6, seed=3)
    d.rescale_(2.5, 0.4)  # as training leaves it: normalised units
    d = d.to(dtype)
    record = torch.ops.profiler._record_function_enter_new("dictionary", None)  # what the profiler holds
    d.register_forward_pre_hook(functools.partial(lambda records, *args: None, {"dictionary": record}))
    x = torch.randn(5, 6, dtype=dtype)
    save_dictionary(d, tmp_path, {"model": "tiny"})
    loaded, meta = load_dictionary(tmp_path / "dictionary.safetensors")
    assert loaded.in_model_units and load_file(tmp_path / "dictionary.safetensors")["W_enc"].dtype == dtype
    assert meta["normalisation"] == {"input_scale": 2.5, "target_scale": pytest.approx(0.4, rel=1e-2)}  # (bf16: 0.4004)
    tolerance = {"atol": 1e-3, "rtol": 0.05} if dtype == torch.bfloat16 else {}  # (folding rounds to 8 bits)
    torch.testing.assert_close(loaded.to(dtype).reconstruct(x), d.reconstruct(x), **tolerance)
    assert float(d.input_scale) == 2.5  # the trained module is left as it was
    torch.ops.profiler._record_function_exit._RecordFunction(record)
