"""Load saved weights (full model or LoRA adapter) into a live module in place.

Moved down to `posttrain.checkpoint` (a lower layer must not import a trainer); re-exported here for
code that imports the old name.
"""
from posttrain.checkpoint import load_weights_into  # noqa: F401  (re-exported)

__all__ = ["load_weights_into"]
