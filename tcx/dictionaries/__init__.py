"""Sparse dictionaries, one file per kind.

A kind is a config dataclass (what `conf/dictionary/<kind>.yaml` names as `_target_`) whose
`build(d_in, d_out)` returns a `Dictionary` module. A transcoder and an SAE are the same kind with
a different target: `input_site`/`target_site` say which activations it reads and reconstructs.
"""
