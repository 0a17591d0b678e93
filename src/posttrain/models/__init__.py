"""Model loading: local Hugging Face folders, tiny from-config models, the bundled SmolLM2 GGUF."""
from posttrain.models.loading import (
    ModelLoadError,
    load_model_and_tokenizer,
    resolve_model_path,
    tiny_model,
)
from posttrain.models.tokenizer import build_char_tokenizer

__all__ = [
    "ModelLoadError",
    "build_char_tokenizer",
    "load_model_and_tokenizer",
    "resolve_model_path",
    "tiny_model",
]
