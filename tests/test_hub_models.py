"""The hub models' own loading code (gpt2-small, pythia-*), tested offline up to the weights: tiny
random configs of the same architectures saved locally and loaded through `model.path=<dir>`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tcx.evaluation.run import evaluate
from tcx.training.run import train


def tiny_tokenizer(directory) -> int:
    """A byte-level BPE with GPT-2's <|endoftext|>, trained on a line: real hub tokenizers need a network."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(["def the return of a value: the docstring says what it is"] * 4, trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    tokenizer.save_pretrained(directory)
    return len(tokenizer)


def gpt2(directory):
    from transformers import GPT2Config, GPT2LMHeadModel

    vocab = tiny_tokenizer(directory)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=128, vocab_size=vocab,
                               bos_token_id=0, eos_token_id=0)).save_pretrained(directory)


def pythia(directory):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    vocab = tiny_tokenizer(directory)
    torch.manual_seed(0)
    GPTNeoXForCausalLM(GPTNeoXConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                                     intermediate_size=256, max_position_embeddings=128, vocab_size=vocab,
                                     bos_token_id=0, eos_token_id=0)).save_pretrained(directory)


@pytest.mark.parametrize(("model", "build"), [("gpt2-small", gpt2), ("pythia-410m", pythia)])
def test_hub_model_config_trains_and_evaluates_through_its_real_loader(make_cfg, tmp_path, model, build):
    build(tmp_path / "weights")
    cfg = make_cfg(f"model={model}", f"model.path={tmp_path / 'weights'}", "model.d_model=64", "layer=1",
                   "trainer.max_tokens=4096", "trainer.eval_tokens=1024", "dictionary.l1_coeff=0.1")
    final = train(cfg, tmp_path / "run")["main"]
    assert final["fidelity_metric"] == "next_token_ce" and final["l0"] > 1
    r = evaluate([tmp_path / "run"], max_tokens=1024, plots=False)["dictionaries"][str(tmp_path / "run")]
    assert r["loss_zero_ablated"] != r["loss_clean"]


PAPER_PROMPT = "The war lasted from the year 1732 to the year 17"


def test_the_papers_gpt2_recipe_up_to_the_weights(make_cfg, tmp_path):
    """sweeps/gpt2-all-layers.yaml as a user with a network runs it, and the README's greater-than
    command after it, on a tiny GPT-2 config: the real loader, every layer, the paper's search."""
    from tcx.sweeps.spec import SweepSpec
    from tests.test_circuit_cli import circuit

    spec = SweepSpec.load(Path(__file__).resolve().parents[1] / "sweeps" / "gpt2-all-layers.yaml")
    assert [p["layer"] for p in spec.points()] == list(range(12))
    paper = make_cfg(*spec.overrides, "layer=11", smoke=False)
    assert (paper.model.path, paper.data.path, paper.dictionary.d_sae, paper.lr) == (
        "gpt2", "Skylion007/openwebtext", 24576, 4e-4)
    assert paper.trainer.max_tokens == 60_000_000 and paper.dictionary.target_site == "mlp_out"

    gpt2(tmp_path / "weights")
    corpus = tmp_path / "owt.txt"
    years = (f"The war lasted from the year 17{i % 100:02d} to the year 17{(i + 5) % 100:02d}." for i in range(400))
    corpus.write_text("\n\n".join(years))
    offline = [o for o in spec.overrides if not o.startswith("data")] + [
        f"model.path={tmp_path / 'weights'}", "model.d_model=64", "data=text-files", f"data.paths=[{corpus}]",
        "dictionary.d_sae=256", "dictionary.l1_coeff=0.1", "trainer.max_tokens=4096", "trainer.batch_size=1024",
        "trainer.eval_tokens=512", "logger=csv"]
    for layer in (0, 1):  # every layer of the tiny model, as the sweep's 12 jobs do for GPT-2
        train(make_cfg(*offline, f"layer={layer}", smoke=False), tmp_path / "sweep" / str(layer))
    out = tmp_path / "circuit"
    done = circuit(f"transcoders={tmp_path / 'sweep'}", f"prompt={PAPER_PROMPT}", "search.num_iters=3",
                   "search.num_branches=15", f"hydra.run.dir={out}")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["transcoder_layers"] == [0, 1] and summary["replay_error"] < 1e-4


def test_every_load_of_a_checkpoint_without_some_weights_is_the_same_model(make_cfg):
    """MiniLM's checkpoint has no masked-LM head; transformers initialises it at random. Each load
    must still be the same model (the activation and evaluation caches key on the weights' digest),
    and loading must leave the caller's random state alone."""
    from tcx.config import build_node
    from tcx.digest import tensors_digest

    spec = build_node(make_cfg("model=minilm", smoke=False).model, "model")
    digests = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        digests.append(tensors_digest(spec.load().bridge.state_dict().values()))
        after = torch.rand(3)
        torch.manual_seed(seed)
        assert torch.equal(torch.rand(3), after)
    assert digests[0] == digests[1]
