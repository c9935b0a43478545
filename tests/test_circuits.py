"""The circuits engine checked against math and against the model's own forward pass (float64 on
tiny seeded models): the replay reproduces every family; rows sum to pre-activations taken from an
independent clean run; each edge equals the change of the target when its source is ablated in the
real model with patterns and norm scales frozen by hooks; closed forms from the weights by hand."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tcx.circuits.direct import Direct, Probe
from tcx.circuits.graph import attribute
from tcx.circuits.nodes import Node
from tcx.circuits.paths import search
from tcx.circuits.replacement import ReplacementModel
from tcx.circuits.sources import Sources
from tcx.circuits.targets.feature import FeatureConfig
from tcx.circuits.targets.logit import LogitConfig, LogitDiffConfig
from tcx.config import build_node
from tcx.errors import ConfigError
from tcx.runs.record import OpenedDictionary
from tests.test_zoo import kind

GEN = torch.Generator().manual_seed(7)
PROMPT = "cat sat 12"


def tiny(make_cfg, *overrides: str):
    return build_node(make_cfg(*overrides).model, "model").load(dtype="float64")


def transcoder(make_cfg, lm, layer: int, name: str = "transcoder", noise: float = 0.0, copy: bool = True,
               d_sae: int | None = None) -> OpenedDictionary:
    """A transcoder of kind `name` at `layer`: the MLP copied exactly (a ReLU MLP is a ReLU transcoder
    with W_enc = diag(γ) W_in, b_enc = β W_in + b_in, W_dec = W_out, b_dec = b_out), then perturbed."""
    b, d_model = lm.bridge, lm.spec.d_model
    width = d_sae or int(b.W_in.shape[-1])
    d = kind(make_cfg, name, f"dictionary.d_sae={width}", d_in=d_model, d_out=d_model).double()
    with torch.no_grad():
        if copy:
            ln2 = b.blocks[layer].ln2
            d.W_enc.copy_(ln2.weight[:, None] * b.W_in[layer])
            d.b_enc.copy_(ln2.bias @ b.W_in[layer] + b.b_in[layer])
            d.W_dec.copy_(b.W_out[layer])
            d.b_dec.copy_(b.b_out[layer])
        for p in (d.W_enc, d.b_enc, d.W_dec, d.b_dec):
            p.add_(noise * torch.randn(p.shape, generator=GEN, dtype=p.dtype))
    meta = {"input_hook": lm.spec.hook("mlp_in", layer), "target_hook": lm.spec.hook("mlp_out", layer),
            "layer": layer}
    return OpenedDictionary(d.eval(), meta, Path(f"L{layer}-{name}"), "tcx")


def tokens(lm, text: str = PROMPT) -> torch.Tensor:
    return torch.tensor(lm.prefix_ids + lm.encode(text))


@pytest.fixture
def noisy(make_cfg):
    lm = tiny(make_cfg)
    return ReplacementModel.build(lm, [transcoder(make_cfg, lm, i, noise=0.05) for i in range(2)], tokens(lm))


def test_a_transcoder_copying_the_relu_mlp_leaves_zero_error(make_cfg):
    lm = tiny(make_cfg)
    rm = ReplacementModel.build(lm, [transcoder(make_cfg, lm, i) for i in range(2)], tokens(lm, "cat"))
    assert rm.replay_error < 1e-12
    assert max(float(c.error.abs().max()) for c in rm.codes.values()) < 1e-12
    graph = attribute(rm, LogitDiffConfig(token="a", other="b").resolve(rm), progress=False)
    errors = [i for i, n in enumerate(graph.nodes) if n.kind == "error"]
    assert graph.adjacency[:, errors].abs().max() < 1e-12


def test_rows_sum_to_preactivations_from_an_independent_clean_run(make_cfg, noisy):
    rm, lm = noisy, noisy.lm
    target = LogitDiffConfig(token="a", other="b").resolve(rm)
    graph = attribute(rm, target, max_feature_nodes=10**6, progress=False)
    hooks = [c.source.input_hook for c in rm.codes.values()]
    clean = lm.run_to(rm.tokens[None], hooks)  # the model's own forward, no replay
    logits = lm.bridge(rm.tokens[None])[0, -1]
    a, b = lm.encode("a")[0], lm.encode("b")[0]
    assert abs(float(graph.adjacency[-1].sum()) + target.constant - float(logits[a] - logits[b])) < 1e-9
    features = [i for i, n in enumerate(graph.nodes) if n.kind == "feature"]
    assert len(features) == graph.extra["active_features"] > 50
    for i in features:
        n = graph.nodes[i]
        c = rm.codes[n.layer]
        pre = clean[c.source.input_hook][0, n.pos] @ c.W_enc[:, n.index]
        assert abs(float(graph.adjacency[i].sum() - pre)) < 1e-9, n
    assert graph.row_residual < 1e-9


def frozen_hooks(rm, mlp_writes: dict[int, torch.Tensor]) -> list:
    """Hooks that freeze the real model at the clean run: attention mixes the live values with the
    clean pattern (`z = A v` at hook_z: transformer-lens 3.9 ignores edits of hook_pattern on this
    bridge), norm scales and MLP outputs are the clean ones."""
    def put(value):
        return lambda act, hook: value[None].to(act.dtype)

    values: dict[int, torch.Tensor] = {}

    def keep_v(i):
        return lambda act, hook: values.__setitem__(i, act) or act

    def mix(i):
        pattern = rm.cache[f"blocks.{i}.attn.hook_pattern"].to(torch.float64)
        return lambda act, hook: torch.einsum("bhts,bshe->bthe", pattern.to(act.dtype), values[i])

    hooks = [hook for i in range(rm.n_layers) for hook in
             ((f"blocks.{i}.attn.hook_v", keep_v(i)), (f"blocks.{i}.attn.hook_z", mix(i)))]
    hooks += [(name, put(t[0])) for name, t in rm.cache.items() if name.endswith("hook_scale")]
    return hooks + [(f"blocks.{i}.hook_mlp_out", put(w)) for i, w in mlp_writes.items()]


def test_each_edge_is_the_effect_of_ablating_its_source_in_the_frozen_real_model(make_cfg, noisy):
    rm, lm = noisy, noisy.lm
    a, b = lm.encode("a")[0], lm.encode("b")[0]
    graph = attribute(rm, LogitDiffConfig(token="a", other="b").resolve(rm), max_feature_nodes=10**6, progress=False)
    clean_mlp = {i: rm.cache[f"blocks.{i}.hook_mlp_out"][0] for i in range(2)}

    def metric(mlp_writes):
        out = lm.run_with_hooks(rm.tokens[None], frozen_hooks(rm, mlp_writes))[0, -1]
        return float(out[a] - out[b])

    def layer1_input(mlp0):
        got = {}
        hook = rm.codes[1].source.input_hook
        lm.run_with_hooks(rm.tokens[None], [*frozen_hooks(rm, {0: mlp0}),
                                            (hook, lambda act, hook: got.setdefault("x", act[0].clone()))])
        return got["x"]

    base, base_x = metric(clean_mlp), layer1_input(clean_mlp[0])
    features = [i for i, n in enumerate(graph.nodes) if n.kind == "feature" and n.layer == 0]
    later = [k for k, m in enumerate(graph.nodes) if m.kind == "feature" and m.layer == 1]
    for i in sorted(features, key=lambda i: -abs(float(graph.adjacency[-1, i])))[:3]:
        n = graph.nodes[i]
        ablated = dict(clean_mlp)
        ablated[0] = clean_mlp[0].clone()
        ablated[0][n.pos] -= rm.codes[0].z[n.pos, n.index] * rm.codes[0].W_dec[n.index]
        assert abs((base - metric(ablated)) - float(graph.adjacency[-1, i])) < 1e-9
        # into each layer-1 feature: the change of its pre-activation in the frozen real model
        change = (base_x - layer1_input(ablated[0])) @ rm.codes[1].W_enc
        for j in later:
            m = graph.nodes[j]
            assert abs(float(change[m.pos, m.index]) - float(graph.adjacency[j, i])) < 1e-9


def test_direct_edges_match_the_closed_forms_from_the_weights(make_cfg, noisy):
    rm = noisy
    w, b = rm.weights, rm.lm.bridge
    c0, c1 = rm.codes[0], rm.codes[1]
    t = rm.n_pos - 1
    j = int(c1.z[t].argmax())
    direct = Direct(rm, Sources(rm))
    target = FeatureConfig(layer=1, index=j, pos=t).resolve(rm)
    found = direct.contributions(Probe(target.hook, target.cotangent))
    d = w.W_E.shape[1]
    centre = torch.eye(d, dtype=rm.dtype) - 1.0 / d

    def sigma(name, pos):
        return float(rm.cache[f"{name}.hook_scale"][0, pos])

    # through the residual stream: z_i W_dec,i (C / σ_ln2(t)) W_enc,j
    residual = {c.node: c.value for c in found if c.node.kind == "feature"}
    for i in c0.z[t].nonzero().flatten().tolist()[:10]:
        by_hand = float(c0.z[t, i] * c0.W_dec[i] @ centre @ c1.W_enc[:, j]) / sigma("blocks.1.ln2", t)
        assert abs(residual[Node("feature", 0, t, i)] - by_hand) < 1e-10
    # through head h of layer 1 from source s:
    # z_i(s) A[t,s] W_dec,i (C/σ_ln1(s)) diag(γ1) W_V,h W_O,h (C/σ_ln2(t)) W_enc,j
    heads = sorted((c for c in found if c.node.kind == "attention" and c.node.layer == 1), key=lambda c: -abs(c.value))
    gamma = b.blocks[1].ln1.weight.detach().double()
    for head in heads[:3]:
        h, s = head.node.index, head.node.source
        A = float(rm.cache["blocks.1.attn.hook_pattern"][0, h, t, s])
        inner = {c.node: c.value for c in direct.contributions(head.probe) if c.node.kind == "feature"}
        for i in c0.z[s].nonzero().flatten().tolist()[:5]:
            by_hand = (c0.z[s, i] * A * (c0.W_dec[i] @ centre / sigma("blocks.1.ln1", s)) * gamma
                       @ w.W_V[1, h] @ w.W_O[1, h] @ centre @ c1.W_enc[:, j]) / sigma("blocks.1.ln2", t)
            assert abs(inner[Node("feature", 0, s, i)] - float(by_hand)) < 1e-10


def test_path_search_is_exact_and_leaves_no_remainder_when_it_keeps_every_branch(make_cfg):
    lm = tiny(make_cfg)
    rm = ReplacementModel.build(lm, [transcoder(make_cfg, lm, i, noise=0.05) for i in range(2)], tokens(lm, "c 1"))
    target = LogitDiffConfig(token="a", other="b").resolve(rm)
    root = target.node
    direct = Direct(rm, Sources(rm))
    full = search(direct, target, root, num_iters=2, num_branches=10**7, progress=False)
    assert len(full.paths) > 500
    assert full.remainders() and max(abs(v) for v in full.remainders().values()) == 0.0
    narrow = search(direct, target, root, num_iters=3, num_branches=4, progress=False)
    assert len(narrow.paths) == 4 and any(abs(v) > 0 for v in narrow.remainders().values())
    for graph in (full, narrow):  # every expanded node is the sum of its children
        totals: dict[Node, float] = {}
        for (_child, parent), v in graph.edges.items():
            totals[parent] = totals.get(parent, 0.0) + v
        for parent, total in totals.items():
            assert abs(total - graph.values[parent]) < 1e-9
    # and the root's children add up to the model's own logit difference, from a clean forward
    logits = lm.bridge(rm.tokens[None])[0, -1]
    a, b = lm.encode("a")[0], lm.encode("b")[0]
    children = sum(v for (_child, parent), v in full.edges.items() if parent == (root,))
    assert abs(children + target.constant - float(logits[a] - logits[b])) < 1e-9


def llama(directory):
    """A tiny Llama with grouped-query attention (4 query heads share 2 key-value heads), as SmolLM2."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.test_hub_models import tiny_tokenizer

    vocab = tiny_tokenizer(directory)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                 intermediate_size=128, max_position_embeddings=128, vocab_size=vocab,
                                 bos_token_id=0, eos_token_id=0)).save_pretrained(directory)


@pytest.mark.parametrize(("model", "family"), [("gpt2-small", "pre"), ("pythia-410m", "parallel"), ("smollm2", "pre")])
def test_replay_reproduces_hub_architectures(make_cfg, tmp_path, model, family):
    from tests.test_hub_models import gpt2, pythia

    {"gpt2-small": gpt2, "pythia-410m": pythia, "smollm2": llama}[model](tmp_path / "w")
    lm = tiny(make_cfg, f"model={model}", f"model.path={tmp_path / 'w'}", "model.d_model=64", "model.n_layers=2")
    ts = [transcoder(make_cfg, lm, i, copy=False, d_sae=96, noise=0.3) for i in range(2)]
    # HF's LlamaRMSNorm computes in float32 whatever the model's dtype: the replay is exact to that
    rm = ReplacementModel.build(lm, ts, tokens(lm, "the value of a docstring"),
                                rtol=1e-6 if model == "smollm2" else 1e-9)
    assert rm.weights.family == family
    graph = attribute(rm, LogitDiffConfig(token="#5", other="#7").resolve(rm), progress=False)
    assert graph.row_residual < 1e-6 * max(1.0, float(graph.adjacency.abs().max()))
    assert graph.extra["active_features"] > 10


def test_minilm_post_norm_rows_sum_to_the_clean_run(make_cfg, tmp_path):
    lm = build_node(make_cfg(smoke=False).model, "model").load()
    ts = [transcoder(make_cfg, lm, i, copy=False, d_sae=64, noise=0.2) for i in (1, 4)]
    rm = ReplacementModel.build(lm, ts, tokens(lm, "the war lasted from 1735 to 1790"), torch.float64)
    assert rm.weights.family == "post" and rm.replay_error < 1e-5
    torch.save({"direction": torch.randn(384, generator=GEN), "bias": 0.25}, tmp_path / "probe.pt")
    from tcx.circuits.targets.direction import DirectionConfig

    target = DirectionConfig(path=str(tmp_path / "probe.pt"), pos="mean").resolve(rm)
    graph = attribute(rm, target, progress=False)
    scale = max(1.0, abs(target.value))
    assert abs(float(graph.adjacency[-1].sum()) + target.constant - target.value) < 1e-5 * scale
    assert graph.row_residual < 1e-4


def test_bad_input_is_named(make_cfg):
    lm = tiny(make_cfg)
    good = transcoder(make_cfg, lm, 0)
    with pytest.raises(ConfigError, match="two transcoders for layer 0"):
        ReplacementModel.build(lm, [good, transcoder(make_cfg, lm, 0)], tokens(lm))
    sae = transcoder(make_cfg, lm, 1)
    sae.meta["target_hook"] = sae.meta["input_hook"]
    with pytest.raises(ConfigError, match="is an SAE"):
        ReplacementModel.build(lm, [sae], tokens(lm))
    with pytest.raises(ConfigError, match="gated"):
        ReplacementModel.build(lm, [transcoder(make_cfg, lm, 1, "gated")], tokens(lm))
    with pytest.raises(ConfigError, match="reads at most 64"):
        ReplacementModel.build(lm, [good], tokens(lm, "x" * 80))
    rm = ReplacementModel.build(lm, [good], tokens(lm))
    with pytest.raises(ConfigError, match=r"target.token='ab' is 2 tokens"):
        LogitConfig(token="ab").resolve(rm)
    with pytest.raises(ConfigError, match="out of range"):
        FeatureConfig(layer=0, index=10_000, pos=-1).resolve(rm)
    with pytest.raises(ConfigError, match="has no transcoder"):
        FeatureConfig(layer=1, index=0, pos=-1).resolve(rm)
    silent = int((rm.codes[0].z[-1] == 0).nonzero()[0])
    with pytest.raises(ConfigError, match=f"feature {silent} of layer 0 does not fire"):
        FeatureConfig(layer=0, index=silent, pos=-1).resolve(rm)


class FakeDirect:
    """target -> A 1.0, target -> B 2.0, A -> B 0.5, B -> token 0.3 (per unit of the parent's probe)."""

    EDGES = {"T": [("A", 1.0), ("B", 2.0)], "A": [("B", 0.5)], "B": [("tok", 0.3)]}

    def contributions(self, probe):
        from tcx.circuits.direct import Contribution, Probe

        scale = float(probe.cotangent)
        return [Contribution(Node("embedding" if name == "tok" else "feature", 0, 0, ord(name[0])), scale * w,
                             None if name == "tok" else Probe(name, torch.tensor(scale * w)))
                for name, w in self.EDGES[probe.hook]]


def test_a_node_reached_two_ways_carries_each_route_value():
    from tcx.circuits.targets import Target

    target = Target("target", "T", "T", torch.tensor(1.0), 0.0, 3.0, 0)
    graph = search(FakeDirect(), target, target.node, num_iters=3, num_branches=100, progress=False)
    values = {tuple(n.index for n in p.nodes[1:]): round(p.value, 9) for p in graph.paths}
    a, b, tok = ord("A"), ord("B"), ord("t")
    assert values == {(a, b, tok): 0.15, (b, tok): 0.6}


def test_skip_transcoder_rows_sum_with_the_skip_live(make_cfg):
    lm = tiny(make_cfg)
    ts = [transcoder(make_cfg, lm, i, "skip_transcoder", copy=False, d_sae=64, noise=0.2) for i in range(2)]
    for t in ts:
        with torch.no_grad():
            t.dictionary.W_skip.copy_(0.1 * torch.randn(t.dictionary.W_skip.shape, generator=GEN, dtype=torch.float64))
    rm = ReplacementModel.build(lm, ts, tokens(lm))
    assert rm.replay.skips and rm.replay_error < 1e-12
    graph = attribute(rm, LogitDiffConfig(token="a", other="b").resolve(rm), max_feature_nodes=10**6, progress=False)
    clean = lm.run_to(rm.tokens[None], [t.input_hook for t in ts])
    for i, n in enumerate(graph.nodes):
        if n.kind == "feature":
            c = rm.codes[n.layer]
            pre = clean[c.source.input_hook][0, n.pos] @ c.W_enc[:, n.index]
            assert abs(float(graph.adjacency[i].sum() - pre)) < 1e-9


def test_de_embedding_is_the_embedding_read_through_the_centring(make_cfg, noisy):
    from tcx.circuits.cards import Cards

    rm = noisy
    c = rm.codes[0]
    j = int(c.z[-1].argmax())
    card = Cards(rm, top=5).feature(Node("feature", 0, rm.n_pos - 1, j))
    d = rm.weights.W_E.shape[1]
    # layer 0 reads ln2.hook_normalized: (x - mean x) / σ, and σ is 1 in the input-invariant map
    by_hand = rm.weights.W_E @ (torch.eye(d, dtype=rm.dtype) - 1.0 / d) @ c.W_enc[:, j]
    top = by_hand.topk(5)
    assert [round(v, 4) for _, v in card["de_embedding"]["top"]] == [round(float(v), 4) for v in top.values]
    assert [t for t, _ in card["de_embedding"]["top"]] == [rm.token_text(int(i)) for i in top.indices]
    assert card["upstream"] == [] and len(card["downstream"]) == 3
