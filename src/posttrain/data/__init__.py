"""Data: sources, formats and validation, chat rendering with masks, collation and packing."""
from posttrain.data.chat import (
    PromptTooLong, TokenizedExample, encode_prompt, encode_response, render, tokenize_sft, tokenize_sft_examples,
)
from posttrain.data.collate import IGNORE, LMBatch, pack_rows, packed_batch, pad_batch
from posttrain.data.formats import KINDS, Example, LoadReport, check_sft_examples, detect_kind, load_examples, sft_problem
from posttrain.data.sources import DataError, Row, read_rows

__all__ = [
    "DataError", "Example", "IGNORE", "KINDS", "LMBatch", "LoadReport", "PromptTooLong", "Row", "TokenizedExample",
    "check_sft_examples", "detect_kind", "encode_prompt", "encode_response", "load_examples", "pack_rows",
    "packed_batch", "pad_batch", "read_rows", "render", "sft_problem", "tokenize_sft", "tokenize_sft_examples",
]
