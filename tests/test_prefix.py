"""Forwards of one batch share the blocks before their edits (`LanguageModel.shared_prefix`), and give
what running everything gives, to the last bit."""

from __future__ import annotations

import pytest
import torch

from tcx.config import build_node
from tcx.evaluation.fidelity import outputs
from tcx.evaluation.splice import ablation_hooks

# model -> (the block an early and a late edit sit in, calls of blocks in the sequence below)
MODELS = {"tiny": ((0, 1), {0: 2, 1: 4}), "minilm": ((1, 3), {0: 1, 2: 2, 3: 4, 4: 4})}


def load(make_cfg, model):
    cfg = make_cfg(f"model={model}", smoke=model == "tiny")
    return build_node(cfg.model, "model").load()


def calls_of(module) -> list[int]:
    calls: list[int] = []
    module.register_forward_hook(lambda *_: calls.append(1))
    return calls


@pytest.mark.parametrize("model", MODELS)
def test_runs_sharing_the_clean_blocks_equal_runs_of_everything(make_cfg, model):
    """Late edit, clean, early edit, late edit, clean: a block runs in a forward that edits it or a
    block before it, and in the first forward that does not; MiniLM's clean run reads block 5, the
    tiny causal model's runs through both blocks."""
    lm = load(make_cfg, model)
    (early, late), expected = MODELS[model]
    tokens = torch.randint(0, 250, (3, 40), generator=torch.Generator().manual_seed(0))
    mean = torch.randn(lm.spec.d_model, generator=torch.Generator().manual_seed(1))
    edits = {"late": ablation_hooks({f"blocks.{late}.hook_mlp_out": None}, slice(1, None)),
             "clean": [], "early": ablation_hooks({f"blocks.{early}.hook_mlp_out": mean}, slice(None))}
    order = ["late", "clean", "early", "late", "clean"]
    with torch.inference_mode():
        alone = {name: outputs(lm, tokens, e) for name, e in edits.items()}
        calls = {i: calls_of(lm.bridge.blocks[i]) for i in expected}
        with lm.shared_prefix(tokens):
            shared = [outputs(lm, tokens, edits[name]) for name in order]
    assert {i: len(c) for i, c in calls.items()} == expected
    for name, s in zip(order, shared, strict=True):
        assert torch.equal(alone[name], s), name
    a = alone  # each edit changes the output
    assert not torch.equal(a["late"], a["clean"]) and not torch.equal(a["early"], a["clean"])
    assert not torch.equal(a["late"], a["early"])
    with torch.inference_mode():  # the blocks are back: a run after the context runs them all
        assert torch.equal(outputs(lm, tokens, edits["late"]), alone["late"]) and len(calls[0]) == expected[0] + 1


def test_the_sentence_embedding_with_an_ablation_matches_hugging_faces_bert_when_shared(make_cfg):
    """The replayed blocks are the model's: MiniLM's zero-ablated sentence embedding, computed after
    the clean one in a shared prefix, is transformers' BertModel's with that MLP output zeroed."""
    from transformers import BertModel

    from tcx.models.embedded import model_dir

    lm = load(make_cfg, "minilm")
    hf = BertModel.from_pretrained(model_dir(lm.spec.package), add_pooling_layer=False).eval()
    tokens = torch.randint(1000, 20000, (2, 48), generator=torch.Generator().manual_seed(0))
    hf.encoder.layer[3].output.dense.register_forward_hook(lambda m, i, o: torch.zeros_like(o))
    with torch.no_grad():
        expected = torch.nn.functional.normalize(hf(input_ids=tokens).last_hidden_state.mean(1), dim=-1)
    with torch.inference_mode(), lm.shared_prefix(tokens):
        outputs(lm, tokens, [])
        zeroed = outputs(lm, tokens, ablation_hooks({"blocks.3.hook_mlp_out": None}, slice(None)))
    torch.testing.assert_close(zeroed, expected, atol=1e-5, rtol=0)


def test_a_forward_on_other_tokens_is_refused(make_cfg):
    lm = load(make_cfg, "tiny")
    tokens = torch.randint(0, 250, (2, 16))
    with torch.inference_mode(), lm.shared_prefix(tokens):
        outputs(lm, tokens, [])
        with pytest.raises(RuntimeError, match="other tokens"):
            outputs(lm, tokens.flip(0), [])
        with pytest.raises(RuntimeError, match="nest"), lm.shared_prefix(tokens):
            pass
    with torch.inference_mode():  # nothing is left behind by the refusals
        assert outputs(lm, tokens.flip(0), []).shape[0] == 2


def test_an_evaluation_runs_the_blocks_before_its_dictionary_once_a_batch(make_cfg, tmp_path, monkeypatch):
    """Clean, zero- and mean-ablated, spliced: four runs of each batch, one of the blocks before the
    dictionary's (and one more a batch for the ablation's means, one for the widths' check)."""
    from tcx.evaluation import run as eval_run
    from tcx.models.native import NativeModelSpec
    from tests.test_evaluation import copy_mlp, place

    run = place(make_cfg(f"cache_dir={tmp_path / 'cache'}"), tmp_path / "a", copy_mlp, d_sae=256)
    block0, runs = [], []
    native_load = NativeModelSpec.load

    def counted_load(self, *args, **kwargs):
        lm = native_load(self, *args, **kwargs)
        lm.bridge.blocks[0].register_forward_hook(lambda *_: block0.append(1))
        return lm

    def counted_outputs(lm, tokens, hooks):
        runs.append(1)
        return outputs(lm, tokens, hooks)

    monkeypatch.setattr(NativeModelSpec, "load", counted_load)
    monkeypatch.setattr(eval_run, "outputs", counted_outputs)
    row = eval_run.evaluate([run], max_tokens=1024, batch_windows=4, plots=False)["dictionaries"][str(run)]
    batches = len(runs) // 4
    assert len(runs) == 4 * batches and batches > 1
    assert len(block0) == 1 + 2 * batches
    assert row["recovered_zero"] == pytest.approx(1.0, abs=1e-3)
