"""Rollout workers on Ray: the `RolloutEngine` protocol over N actors, each with its own engine.

`RayRolloutPool(model, tokenizer, workers=N)` starts N Ray actors (`posttrain rl --rollout.backend ray
--rollout.workers N`). Each holds a copy of the policy in an `HFEngine` with its own CPU (or GPU)
reservation and torch threads. The pool speaks the same protocol as one engine:

- ``generate(prompts, params)`` deals the prompts out over the workers (prompt i to worker i mod N),
  runs them concurrently and puts the completions back in prompt order. Completions come back with
  their token ids, sampling logprobs and the policy version of the worker that sampled them. With
  per-prompt seeds (``SamplingParams.seeds``; ``--rl.seed_per_prompt``) a prompt samples the same
  tokens on whichever worker it lands, so N workers give the rollouts of the in-process engine.
  Without them, worker w draws from ``seed + 7919 * w``.
- ``update_weights(named_weights, version)`` puts the weights into Ray's object store once, as CPU
  tensors in Hugging Face names with LoRA merged (`PolicyWeights`), and every worker loads them by
  name. Each call waits at most ``timeout_s``. This is the object-store transport; NCCL broadcast for
  GPU workers and adapter-only LoRA sync are later transports behind the same call.

Failures name the worker:

- An exception inside a worker comes back as that exception's type and message, prefixed with the
  worker (``rollout worker 1 of 2: ValueError: empty prompt ...``).
- A worker process that died is reported with Ray's account of its death (``killed by signal``, out
  of memory, ...), not a bare actor-died error.
- A call past ``timeout_s`` says which workers had not answered.
- With ``max_restarts`` > 0 a dead worker is replaced: a new actor with the initial weights, brought
  to the current version with the last weights sent. Its share of the call is retried once, and the
  run goes on. Replacements are counted in `restarts`.

On one machine the pool starts a local Ray instance (``ray.init``); ``address`` (``--ray.address``)
joins a running cluster. Ray is an optional dependency (``pip install 'posttrain[ray]'``).
"""
from __future__ import annotations

import copy
import time
from dataclasses import replace
from typing import Sequence

from posttrain.config import ConfigError
from posttrain.rollout.base import Completion, SamplingParams


class RolloutWorkerError(RuntimeError):
    """A rollout worker failed, timed out or died; the message names it and the cause."""


def import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("--rollout.backend ray needs Ray: pip install 'posttrain[ray]' (or pip install ray)") from None
    return ray


class _RolloutWorker:
    """One Ray actor: an `HFEngine` over its own copy of the policy (made remote in the pool)."""

    def __init__(self, model, tokenizer, sequences_per_batch: int, lean: bool, threads: int, device: str):
        import torch

        from posttrain.rollout.hf import HFEngine

        torch.set_num_threads(max(1, threads))
        self.model = model.to(device).eval()
        self.engine = HFEngine(self.model, tokenizer, sequences_per_batch=sequences_per_batch, lean=lean)

    def ready(self) -> int:
        import os

        return os.getpid()

    def generate(self, prompts, params) -> list[list[Completion]]:
        return self.engine.generate(prompts, params)

    def update_weights(self, state: dict, version: int) -> int:
        self.engine.update_weights(state.items(), version)
        return version

    def exit_now(self, code: int = 1) -> None:  # test hook: the process dies mid-run, as a crash would
        import os

        os._exit(code)


class RayRolloutPool:
    """`RolloutEngine` over Ray actors (see the module docstring)."""

    def __init__(self, model, tokenizer, workers: int = 2, *, sequences_per_batch: int = 256, lean: bool = True,
                 cpus_per_worker: float = 1.0, gpus_per_worker: float = 0.0, timeout_s: float = 300.0,
                 max_restarts: int = 0, address: str = ""):
        ray = import_ray()
        self.ray = ray
        if not ray.is_initialized():
            kwargs = {"address": address} if address else {}
            ray.init(include_dashboard=False, log_to_driver=False, ignore_reinit_error=True, **kwargs)
        from posttrain.rollout.vllm import _plain_model

        plain = _plain_model(model)
        cpu_copy = copy.deepcopy(plain).to("cpu") if next(plain.parameters()).device.type != "cpu" else plain
        self._init_args = (ray.put(cpu_copy), ray.put(tokenizer), sequences_per_batch, lean,
                           max(1, int(cpus_per_worker)), "cuda" if gpus_per_worker > 0 else "cpu")
        self._actor_cls = ray.remote(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker)(_RolloutWorker)
        self.timeout_s, self.restarts_left, self.restarts = timeout_s, max_restarts, 0
        self.version, self._weights = 0, None  # the last weights sent (an object ref), for replacements
        self.actors = [self._actor_cls.remote(*self._init_args) for _ in range(workers)]
        self.pids = self._get_shares({w: a.ready.remote() for w, a in enumerate(self.actors)},
                                     lambda w: self.actors[w].ready.remote(), "start")

    @property
    def workers(self) -> int:
        return len(self.actors)

    # -- the protocol -----------------------------------------------------------------------
    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[list[Completion]]:
        return self.generate_async(prompts, params).result()

    def generate_async(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> "PendingRollout":
        """Submit the generation and return at once; `PendingRollout.result()` waits for it. A weight
        update submitted after it reaches each worker after this generation (a Ray actor runs its
        calls in order), so the completions carry the version they were sampled with."""
        n = self.workers
        shares = [list(range(w, len(prompts), n)) for w in range(n)]
        calls = {w: self._generate_call(w, prompts, idx, params) for w, idx in enumerate(shares) if idx}
        return PendingRollout(self, calls, shares, len(prompts), lambda w: self._generate_call(w, prompts, shares[w], params))

    def update_weights(self, named_weights, version: int) -> None:
        state = {k: v.detach().to("cpu") for k, v in named_weights}
        self._weights = self.ray.put(state)
        self.version = int(version)
        calls = {w: a.update_weights.remote(self._weights, self.version) for w, a in enumerate(self.actors)}
        self._get_shares(calls, lambda w: self.actors[w].update_weights.remote(self._weights, self.version), "update_weights")

    def shutdown(self) -> None:
        for a in self.actors:
            try:
                self.ray.kill(a)
            except Exception:  # already gone
                pass
        self.actors = []

    # -- calls, failures and replacements -----------------------------------------------------
    def _generate_call(self, w: int, prompts, idx: list[int], params: SamplingParams):
        sub = replace(params, seeds=tuple(params.seeds[i] for i in idx) if params.seeds is not None else None,
                      seed=None if params.seed is None else params.seed + 7919 * w)
        return self.actors[w].generate.remote([list(prompts[i]) for i in idx], sub)

    def _get_shares(self, calls: dict, retry, what: str) -> dict:
        """Each worker's result; a dead worker is replaced and its share retried once (while restarts
        last), any other failure raised as a `RolloutWorkerError` naming the worker."""
        ray = self.ray
        results, pending = {}, dict(calls)
        deadline = time.monotonic() + self.timeout_s
        retried: set[int] = set()
        while pending:
            ready, _ = ray.wait(list(pending.values()), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                late = sorted(w for w in pending)
                raise RolloutWorkerError(f"rollout worker(s) {', '.join(map(str, late))} of {self.workers}: {what} "
                                         f"did not answer within rollout.timeout_s={self.timeout_s:g}s")
            w = next(k for k, ref in pending.items() if ref == ready[0])
            del pending[w]
            try:
                results[w] = ray.get(ready[0])
            except ray.exceptions.RayActorError as e:  # the process is gone
                cause = _death_cause(e)
                if self.restarts_left > 0 and w not in retried:
                    self._replace(w, cause)
                    retried.add(w)
                    pending[w] = retry(w)
                    deadline = max(deadline, time.monotonic() + self.timeout_s)
                    continue
                raise RolloutWorkerError(f"rollout worker {w} of {self.workers} died during {what}: {cause}"
                                         + ("" if self.restarts_left else " (rollout.max_restarts is used up)" if self.restarts else
                                            " (rollout.max_restarts 0: not restarted)")) from None
            except ray.exceptions.RayTaskError as e:  # the worker raised: its own exception
                inner = e.cause if getattr(e, "cause", None) is not None else e
                raise RolloutWorkerError(f"rollout worker {w} of {self.workers}: {type(inner).__name__}: {inner}") from None
        return results

    def _replace(self, w: int, cause: str) -> None:
        from posttrain.logging import warn

        self.restarts_left -= 1
        self.restarts += 1
        warn(f"rollout worker {w} of {self.workers} died ({cause}); replacing it (restarts left: {self.restarts_left})")
        try:
            self.ray.kill(self.actors[w])
        except Exception:
            pass
        self.actors[w] = self._actor_cls.remote(*self._init_args)
        try:
            self.pids[w] = self.ray.get(self.actors[w].ready.remote(), timeout=self.timeout_s)
            if self._weights is not None:  # bring it to the current version
                self.ray.get(self.actors[w].update_weights.remote(self._weights, self.version), timeout=self.timeout_s)
        except Exception as e:
            raise RolloutWorkerError(f"rollout worker {w} of {self.workers}: its replacement failed to start: "
                                     f"{type(e).__name__}: {_death_cause(e)}") from None


class PendingRollout:
    """A generation in flight on the workers (`RayRolloutPool.generate_async`)."""

    def __init__(self, pool: RayRolloutPool, calls: dict, shares: list[list[int]], n: int, retry):
        self.pool, self.calls, self.shares, self.n, self.retry = pool, calls, shares, n, retry

    def result(self) -> list[list[Completion]]:
        results = self.pool._get_shares(self.calls, self.retry, "generate")
        out: list = [None] * self.n
        for w, comps in results.items():
            for i, group in zip(self.shares[w], comps):
                out[i] = group
        return out


def _death_cause(e) -> str:
    """Ray's account of why an actor died, one line (its exit detail, signal, OOM...)."""
    text = str(e).strip()
    for marker in ("The actor died", "The actor is dead", "Worker exit", "exit_detail"):
        pos = text.find(marker)
        if pos >= 0:
            text = text[pos:]
            break
    return " ".join(text.split())[:400] or type(e).__name__
