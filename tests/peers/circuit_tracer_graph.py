"""Run under circuit-tracer's own interpreter: circuit-tracer's attribution graph for a prompt, on a
local GPT-2-style model folder (config.json + weights + tokenizer.json) and a transcoder set folder
that tcx-export wrote, all offline.

    python circuit_tracer_graph.py <set folder> <model folder> <prompt> <out.pt> [token other]

`ReplacementModel.from_pretrained*` cannot take a local folder: transformer-lens'
`HookedTransformer.from_pretrained` resolves every name against its list of official models
(loading_from_pretrained.get_official_model_name raises for a path), and `model_name="gpt2",
hf_model=...` still fetches gpt2's config from the hub (convert_hf_model_config -> AutoConfig). So
this takes the public route circuit-tracer's own tests take (tests/test_attributions_*.py):
`ReplacementModel.from_config(HookedTransformerConfig, transcoders)`, then sets the parameters. The
config and the weights come from transformer-lens' converters, which read a local folder
(`get_pretrained_model_config(<dir>)`, `get_pretrained_state_dict(<dir>, cfg, hf_model)`); the
weights go in unprocessed (no LayerNorm folding or centring, as `from_pretrained_and_transcoders`
asks), and the logits are checked against the Hugging Face model's own.

The prompt is `[bos] + tokenizer(prompt)`, as tcx builds it (circuit-tracer's own BOS insertion
skips a BOS id of 0). With `token other` the target is the logit difference
`logit(token) - logit(other)` (a CustomTarget, W_U[:, a] - W_U[:, b]); without, circuit-tracer's
salient logits (demeaned).

The file holds: adjacency [n, n] (adjacency[target, source], circuit-tracer's order: selected
features, errors [layer, pos], tokens [pos], logits), selected_features [k, 3] (layer, pos, index),
activations [k], logit_tokens [m] (token ids; vocab_size + i for a custom target), logit_probabilities,
input_tokens [n_pos], n_layers, n_pos, logits_max_abs_diff (vs Hugging Face).
"""

import json
import sys
import tempfile
from pathlib import Path

import torch
from circuit_tracer import ReplacementModel, attribute
from circuit_tracer.attribution.targets import CustomTarget
from circuit_tracer.utils.hf_utils import load_transcoder_from_hub
from transformer_lens.loading_from_pretrained import get_pretrained_model_config, get_pretrained_state_dict
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

DTYPE = torch.float64


def with_n_ctx(model_dir: str, scratch: str) -> str:
    """transformer-lens' GPT-2 converter reads `n_ctx`, which the hub's gpt2 config.json carries but a
    config saved by recent transformers does not: a scratch folder of links with it added."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    if "n_ctx" in config or config.get("model_type") != "gpt2":
        return model_dir
    for f in Path(model_dir).iterdir():
        if f.name != "config.json":
            (Path(scratch) / f.name).symlink_to(f.resolve())
    (Path(scratch) / "config.json").write_text(json.dumps({**config, "n_ctx": config["n_positions"]}))
    return scratch


def build(set_dir: str, model_dir: str):
    device = torch.device("cpu")
    transcoders, _ = load_transcoder_from_hub(set_dir, device=device, dtype=DTYPE)  # an absolute path: no hub
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=DTYPE).eval()
    # add_bos_token=True: transformer-lens then keeps this tokenizer instead of reloading it by name
    tokenizer = PreTrainedTokenizerFast.from_pretrained(model_dir, add_bos_token=True)
    cfg = get_pretrained_model_config(model_dir, fold_ln=False, device="cpu", dtype=DTYPE)
    state = get_pretrained_state_dict(model_dir, cfg, hf, dtype=DTYPE)
    model = ReplacementModel.from_config(cfg, transcoders, backend="transformerlens", tokenizer=tokenizer)
    # the replacement model wraps each MLP and the unembedding (ReplacementMLP.old_mlp, ...)
    params = {k: v for k, v in model.named_parameters() if not k.startswith("transcoders.")}
    for name, value in state.items():
        key = (name.replace(".mlp.", ".mlp.old_mlp.") if ".mlp." in name
               else name.replace("unembed.", "unembed.old_unembed.") if name.startswith("unembed.") else name)
        if key in params:
            params.pop(key).data.copy_(value)
        elif not name.endswith(("attn.IGNORE", "attn.mask")):
            raise KeyError(f"{name} has no place in circuit-tracer's model")
    for k in [k for k in params if k.split(".")[-1].startswith("b_")]:  # as fill_missing_keys: GPT-2's b_U
        params.pop(k).data.zero_()
    if params:
        raise KeyError(f"parameters the checkpoint did not set: {sorted(params)}")
    return model, hf, tokenizer


def main(set_dir: str, model_dir: str, prompt: str, out: str, *target: str) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        model, hf, tokenizer = build(set_dir, with_n_ctx(model_dir, scratch))
    tokens = torch.tensor([tokenizer.bos_token_id, *tokenizer(prompt, add_special_tokens=False).input_ids])
    with torch.no_grad():
        gap = float((model(tokens[None]) - hf(tokens[None]).logits).abs().max())
    assert gap < 1e-9, f"circuit-tracer's model is not the checkpoint: logits differ by {gap}"
    targets = None
    if target:
        a, b = (tokenizer(t, add_special_tokens=False).input_ids for t in target)
        assert len(a) == len(b) == 1, f"{target} are not single tokens"
        W_U = model.unembed_proj
        targets = [CustomTarget(f"logit({target[0]!r}) - logit({target[1]!r})", 1.0,
                                (W_U[:, a[0]] - W_U[:, b[0]]).detach())]
    graph = attribute(tokens, model, attribution_targets=targets, batch_size=256)
    chosen = graph.active_features[graph.selected_features]
    torch.save({"adjacency": graph.adjacency_matrix, "selected_features": chosen,
                "activations": graph.activation_values[graph.selected_features],
                "logit_tokens": graph.logit_token_ids, "logit_probabilities": graph.logit_probabilities,
                "input_tokens": tokens, "n_layers": model.cfg.n_layers, "n_pos": len(tokens),
                "logits_max_abs_diff": gap}, out)
    print(f"circuit-tracer: {len(chosen)} features, {graph.adjacency_matrix.shape[0]} nodes, "
          f"logits vs HF {gap:.1e} -> {out}")


if __name__ == "__main__":
    main(*sys.argv[1:])
