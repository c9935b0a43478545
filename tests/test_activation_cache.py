"""The activation cache (tcx-cache, trainer.activation_cache): a run that reads it trains the same
weights, bit for bit, as one that runs the model, without running it; a shard that belongs to
another stream, or that is damaged, is refused by name."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

from tcx.activations.cache import ActivationCacheError
from tcx.activations.fill import fill_cache
from tcx.activations.stream import ActivationStream
from tcx.config import build_node
from tcx.training.run import train

SHORT = ["trainer.max_tokens=16384", "trainer.eval_tokens=2048",
         "bank=[{name: tc}, {dictionary: topk, k: 8, input_site: mlp_out, name: sae}]"]


def test_training_from_the_cache_is_training_live(make_cfg, tmp_path, monkeypatch):
    train(make_cfg(*SHORT), tmp_path / "live")
    folder = fill_cache(make_cfg(*SHORT))
    assert len(list(folder.glob("*/*.pt"))) == 2 * 2  # two sites, two chunks of 8,192 tokens

    def model_runs(self, index):
        raise AssertionError(f"chunk {index} ran the model")
    monkeypatch.setattr(ActivationStream, "compute", model_runs)
    train(make_cfg(*SHORT, "trainer.activation_cache=true"), tmp_path / "cached")
    for member in ("tc", "sae"):
        live, cached = (load_file(tmp_path / run / member / "dictionary.safetensors") for run in ("live", "cached"))
        assert all(torch.equal(live[k], cached[k]) for k in live), member


def test_a_shard_of_another_stream_or_a_damaged_one_is_refused(make_cfg, tmp_path):
    folder = fill_cache(make_cfg(*SHORT))
    other = fill_cache(make_cfg(*SHORT, "seed=1"))
    assert other != folder
    shard = next(folder.glob("*/000000.pt"))
    shutil.copy(other / shard.parent.name / shard.name, shard)
    with pytest.raises(ActivationCacheError, match=r"seed 1 there, 0 here"):
        train(make_cfg(*SHORT, "trainer.activation_cache=true"), tmp_path / "a")
    shard.write_bytes(b"not a shard")
    with pytest.raises(ActivationCacheError, match=r"cannot be read.*Delete it"):
        train(make_cfg(*SHORT, "trainer.activation_cache=true"), tmp_path / "b")
    shard.unlink()  # a missing shard is computed again
    train(make_cfg(*SHORT, "trainer.activation_cache=true"), tmp_path / "c")
    assert shard.is_file()


def test_the_weights_digest_is_computed_once_and_follows_edits(make_cfg):
    """The caches key on the model weights' digest, taken once per state of the weights."""
    from tcx.digest import tensors_digest

    lm = build_node(make_cfg().model, "model").load()
    first = lm.weights_digest()
    assert first == tensors_digest(lm.bridge.state_dict().values())
    memo = lm._digest
    assert lm.weights_digest() == first and lm._digest is memo  # not hashed again
    with torch.no_grad():
        next(lm.bridge.parameters()).add_(1.0)
    assert lm.weights_digest() != first
    lm.bridge.to(torch.float64)
    assert lm.weights_digest() == tensors_digest(lm.bridge.state_dict().values())


def test_a_model_setting_outside_the_weights_has_its_own_cache(make_cfg):
    """`model.act_fn=gelu` leaves the tiny model's weights as they are but changes its MLP's output:
    a cache of the ReLU model must not serve it. Where files are kept changes nothing."""
    relu = fill_cache(make_cfg(*SHORT))
    gelu = fill_cache(make_cfg(*SHORT, "model.act_fn=gelu"))
    assert gelu != relu
    lms = [build_node(make_cfg(*SHORT, *o).model, "model").load() for o in ([], ["model.act_fn=gelu"])]
    assert lms[0].weights_digest() == lms[1].weights_digest()
    hook = next(p.name for p in relu.iterdir() if "mlp_out" in p.name)
    assert not torch.equal(*(torch.load(f / hook / "000000.pt")["rows"] for f in (relu, gelu)))
    smollm2 = [build_node(make_cfg("model=smollm2-q4", f"model.cache_dir={d}").model, "model") for d in ("/a", "/b")]
    assert smollm2[0].settings_digest() == smollm2[1].settings_digest()
