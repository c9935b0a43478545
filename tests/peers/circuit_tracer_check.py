"""Run under circuit-tracer's own interpreter (it pins transformers<=4.57, transformer-lens<3.9, so
it lives in a venv of its own): load a transcoder set folder with circuit-tracer's loader, encode and
decode the given inputs, write the results.

    python circuit_tracer_check.py <set folder> <inputs.safetensors> <outputs.safetensors>
"""

import sys

import torch
from circuit_tracer.utils.hf_utils import load_transcoder_from_hub
from safetensors.torch import load_file, save_file

folder, inputs, outputs = sys.argv[1:4]
transcoders, _ = load_transcoder_from_hub(folder, device=torch.device("cpu"))  # an absolute path: no hub
xs = load_file(inputs)
result = {}
with torch.no_grad():
    for layer in range(transcoders.n_layers):
        x = xs[f"x_{layer}"]
        z = transcoders[layer].encode(x)
        result[f"z_{layer}"], result[f"y_{layer}"] = z, transcoders[layer].decode(z, x)
save_file({k: v.contiguous() for k, v in result.items()}, outputs)
print(f"circuit-tracer loaded {transcoders.n_layers} layers from {folder}")
