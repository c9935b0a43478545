"""The one place that knows which transformer-lens is installed.

tcx is written against `TransformerBridge` alone, which both 3.9 (the version SAELens pins) and
4.x provide. Import it from here, never from transformer_lens directly.
"""

from __future__ import annotations

from importlib.metadata import version

TL_VERSION = version("transformer-lens")
TL_MAJOR = int(TL_VERSION.split(".")[0])


def bridge_classes():
    """(TransformerBridge, TransformerBridgeConfig), imported lazily: the import costs seconds."""
    from transformer_lens.model_bridge import TransformerBridge

    try:
        from transformer_lens.config import TransformerBridgeConfig
    except ImportError:  # older 3.x layouts
        from transformer_lens.model_bridge import TransformerBridgeConfig  # type: ignore
    return TransformerBridge, TransformerBridgeConfig
