"""Rollout workers on Ray: the `RolloutEngine` protocol over N actors, each with its own engine.

`RayRolloutPool(model, tokenizer, workers=N)` starts N Ray actors (`posttrain rl --rollout.backend ray
--rollout.workers N`). Each holds a copy of the policy in an engine (``engine="hf"``: an `HFEngine`;
``engine="vllm"``: a `VLLMEngine` built in the actor from a folder it writes, the ``rl.engine`` choice)
with its own CPU (or GPU) reservation and torch threads. The pool speaks the same protocol as one engine:

- ``generate(prompts, params)`` deals the prompts out over the workers (prompt i to worker i mod N),
  runs them concurrently and puts the completions back in prompt order. Completions come back with
  their token ids, sampling logprobs and the policy version of the worker that sampled them. With
  per-prompt seeds (``SamplingParams.seeds``; ``--rl.seed_per_prompt``) a prompt samples the same
  tokens on whichever HF worker it lands, so N workers give the rollouts of the in-process engine
  (the vLLM engine ignores per-prompt seeds: its streams follow ``seed``). Without them, worker w
  draws from ``seed + 7919 * w``.
- ``update_weights(named_weights, version)`` brings every worker to the policy's weights as `version`
  over one of the transports below (``transport=``; the config field ``rollout.transport``). Each call
  waits at most ``timeout_s``.
- ``worker_stats()``: per worker, the seconds spent inside ``generate`` and inside weight loading
  (``generate_s``, ``sync_s``, their sum ``busy_s``), the bytes of weights it received
  (``sync_bytes``), cumulative since the pool started (``uptime_s``), measured in the worker and
  carried back with each result (so asking never waits behind a generation in flight). A trainer
  turns differences between two steps into worker idle time.

Weight-sync transports (``transport``):

- ``object_store``: the weights go into Ray's object store once, as CPU tensors in Hugging Face names
  with LoRA merged (`PolicyWeights`), and every worker loads them by name. Works across nodes.
- ``shared_memory``: for workers on the driver's node (checked at start). The weights are written
  into one flat shared-memory file (``/dev/shm``, mapped as a torch uint8 tensor; each tensor at a
  64-byte-aligned offset), and a worker copies its tensors out of the mapping; only the layout (name,
  offset, dtype, shape) travels through Ray. The file is rewritten in place on every sync (a new one
  when the names, shapes or dtypes change) and removed by ``shutdown``. Bytes are copied, never
  converted, so workers hold exactly the sent weights. Timings: ``benchmarks/weight_sync.py``.
- ``adapter``: for a LoRA (peft) policy whose only trainable tensors are vanilla LoRA ``lora_A`` /
  ``lora_B`` (no DoRA, no LoRA bias, no ``modules_to_save``). The workers start with a peft-wrapped
  copy of the policy (the frozen base plus its adapter) next to the merged model their engine runs;
  a sync sends only the adapter tensors and the version, and each worker writes
  ``base + get_delta_weight()`` of every adapted layer into its engine's model (peft's own merge
  arithmetic, on an untouched base, so the merged weights are bit-identical to the driver's merge
  and do not drift over syncs). A sync moves the adapter's bytes (MBs) instead of the model's.
  Costs: each worker holds the base twice (peft copy and merged copy).
- ``collective``: a broadcast from the trainer (rank 0) to the workers (ranks 1..N) over a process
  group of their own (`posttrain.rollout.collective`: ``gloo`` for CPU workers, ``nccl`` for GPU
  workers), in flat per-dtype buckets, as verl and OpenRLHF sync their engines. The group is built
  when the pool starts and rebuilt when a worker is replaced; the trainer keeps the packed buckets,
  so the replacement gets the current version by a rebroadcast.
- ``auto`` (default): ``adapter`` for such a LoRA policy, else ``object_store``.

vLLM workers (``engine="vllm"``) take every transport; the engine reloads the full (merged) weights
with `VLLMEngine.update_weights`. On CPU each vLLM actor binds its OpenMP threads itself
(``VLLM_CPU_OMP_THREADS_BIND``, default ``auto``): several vLLM workers on one node may bind to the
same cores unless that variable is set per worker.

The ``collective`` transport's ``nccl`` backend has not run: this machine has no GPU (its ``gloo``
backend, the same code on CPU tensors, is tested). CUDA IPC handles (verl's colocated
``update_weights_from_tensor``) are not built.

Departures from verl / OpenRLHF:
- Their rollout workers are colocated with or placed beside the trainer's GPUs and sync by NCCL
  broadcast or CUDA IPC, bucketed by size; here the host-memory transports (object store, shared
  memory) are unbucketed (one put, one file per sync), and only ``collective`` buckets.
- Adapter sync: verl's LoRA RL (FSDP + vLLM) has vLLM load the base once and hands it the adapter,
  which vLLM's LoRA support applies at generation time; here the worker merges the adapter into
  plain weights, so the engine (HF or vLLM) runs the merged model and its logprobs are the merged
  model's (peft's unmerged forward rounds differently: the same greedy tokens in the tests, logprobs
  apart by up to ~1e-3 with large random weights).
- No bucketing, no weight-version handshake beyond the version number each completion carries.

Failures name the worker:

- An exception inside a worker comes back as that exception's type and message, prefixed with the
  worker (``rollout worker 1 of 2: ValueError: empty prompt ...``), during generation or weight sync.
- A worker process that died is reported with Ray's account of its death (``killed by signal``, out
  of memory, ...), not a bare actor-died error.
- A call past ``timeout_s`` says which workers had not answered.
- With ``max_restarts`` > 0 a dead worker is replaced: a new actor with the initial weights, brought
  to the current version by replaying the last sync (the same object, file or adapter). Its share of
  the call is retried once, and the run goes on. Replacements are counted in `restarts`.

On one machine the pool starts a local Ray instance (``ray.init``); ``address`` (``--ray.address``)
joins a running cluster. Ray is an optional dependency (``pip install 'posttrain[ray]'``).
"""
from __future__ import annotations

import copy
import os
import time
import uuid
import weakref
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from posttrain.config import ConfigError
from posttrain.rollout.base import Completion, SamplingParams

TRANSPORTS = ("auto", "object_store", "shared_memory", "adapter", "collective")
ENGINES = ("hf", "vllm")
_ALIGN = 64  # bytes: every tensor of the shared-memory file starts at a multiple of this


class RolloutWorkerError(RuntimeError):
    """A rollout worker failed, timed out or died; the message names it and the cause. ``died``: the
    worker whose process is gone, when that is the failure."""

    def __init__(self, message: str, died: int | None = None):
        super().__init__(message)
        self.died = died


def import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("--rollout.backend ray needs Ray: pip install 'posttrain[ray]' (or pip install ray)") from None
    return ray


# -- LoRA adapters ---------------------------------------------------------------------------
def _is_peft(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def is_adapter_name(name: str) -> bool:
    """A peft LoRA tensor (``...q_proj.lora_A.default.weight``, ``lora_embedding_B``, ...)."""
    return any(part.startswith("lora_") for part in name.split("."))


def adapter_tensors(model) -> dict:
    """The LoRA tensors of a peft policy, detached CPU tensors by their peft names."""
    return {n: p.detach().to("cpu") for n, p in model.named_parameters() if is_adapter_name(n)}


def adapter_only_problem(model) -> str | None:
    """Why the `adapter` transport cannot sync `model` exactly (None when it can)."""
    if not _is_peft(model):
        return "the policy has no LoRA adapter (model.lora_rank 0)"
    extra = [n for n, p in model.named_parameters() if p.requires_grad and not is_adapter_name(n)]
    if extra:
        return f"trainable tensors outside the adapter would not be synced: {extra[:3]}"
    from peft.tuners.lora import Embedding, Linear, LoraLayer

    for name, m in model.named_modules():
        if isinstance(m, LoraLayer):
            if type(m) not in (Linear, Embedding) or getattr(m, "lora_variant", None) or any(getattr(m, "lora_bias", {}).values()):
                return f"{name} is not a vanilla LoRA Linear/Embedding layer (DoRA, LoRA bias, conv, ...)"
    return None


def resolve_transport(transport: str, model) -> str:
    """The transport `update_weights` uses for `model`: ``auto`` is ``adapter`` for a LoRA policy it
    can sync exactly, else ``object_store``; an explicit ``adapter`` that cannot is a ConfigError."""
    if transport not in TRANSPORTS:
        raise ConfigError(f"rollout.transport must be one of {', '.join(TRANSPORTS)}, got '{transport}'")
    problem = adapter_only_problem(model)
    if transport == "auto":
        return "object_store" if problem else "adapter"
    if transport == "adapter" and problem:
        raise ConfigError(f"rollout.transport adapter: {problem}; use rollout.transport object_store")
    return transport


def merge_adapter_into(peft_model, plain) -> None:
    """Write ``base + delta`` of every LoRA layer of `peft_model` into the same-named weight of the
    plain model `plain` (peft's ``merge`` arithmetic, one active adapter after another), leaving the
    peft model's base untouched."""
    import torch
    from peft.tuners.lora import LoraLayer

    targets = dict(plain.named_parameters())
    with torch.no_grad():
        for name, m in peft_model.named_modules():
            if not isinstance(m, LoraLayer):
                continue
            key = name.removeprefix("base_model.model.") + ".weight"
            if key not in targets:
                raise KeyError(f"merged LoRA layer {key} not in the engine's model")
            out, base = targets[key], m.get_base_layer().weight.detach()
            deltas = [m.get_delta_weight(a).to(base.dtype) for a in m.active_adapters
                      if a in m.lora_A or a in getattr(m, "lora_embedding_A", {})]
            if out.device == base.device and deltas:  # one pass: the same sums as peft's `weight += delta`
                torch.add(base, deltas[0], out=out)
                for d in deltas[1:]:
                    out += d
            else:  # (an engine on another device: merge on the host, then copy)
                merged = base.clone()
                for d in deltas:
                    merged += d
                out.copy_(merged)


# -- shared memory -----------------------------------------------------------------------------
class SharedWeights:
    """A flat shared-memory file holding named tensors at aligned offsets (driver side)."""

    def __init__(self, state: dict):
        import torch

        self.layout, off = {}, 0
        for k, v in state.items():
            nbytes = v.numel() * v.element_size()
            self.layout[k] = (off, nbytes, v.dtype, tuple(v.shape))
            off += -(-nbytes // _ALIGN) * _ALIGN
        self.size = max(off, _ALIGN)
        folder = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(os.environ.get("TMPDIR", "/tmp"))
        self.path = str(folder / f"posttrain-weights-{os.getpid()}-{uuid.uuid4().hex[:12]}")
        with open(self.path, "wb") as f:
            f.truncate(self.size)
        self.buf = torch.from_file(self.path, shared=True, size=self.size, dtype=torch.uint8)
        self._finalizer = weakref.finalize(self, _unlink, self.path)

    def fits(self, state: dict) -> bool:
        return list(self.layout) == list(state) and all(
            (v.dtype, tuple(v.shape)) == self.layout[k][2:] for k, v in state.items())

    def write(self, state: dict) -> int:
        for k, v in state.items():
            off, nbytes, dtype, shape = self.layout[k]
            self.buf[off:off + nbytes].view(dtype).view(shape).copy_(v)
        return sum(n for _, n, _, _ in self.layout.values())

    def close(self) -> None:
        self._finalizer()


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _shared_views(buf, layout: dict) -> list:
    return [(k, buf[off:off + nbytes].view(dtype).view(shape)) for k, (off, nbytes, dtype, shape) in layout.items()]


def _nbytes(tensors) -> int:
    return sum(v.numel() * v.element_size() for v in tensors)


# -- the actor ---------------------------------------------------------------------------------
class _RolloutWorker:
    """One Ray actor: an engine over its own copy of the policy (made remote in the pool). Its
    ``generate`` and ``update_*`` return ``(result, seconds inside, [bytes received])``."""

    def __init__(self, model, tokenizer, opts: dict):
        import torch

        from posttrain.rollout.vllm import _plain_model

        torch.set_num_threads(max(1, opts["threads"]))
        self.peft = model if _is_peft(model) else None  # adapter transport: frozen base + adapter
        plain = _plain_model(model)
        self.model = None  # the HF model the engine runs (hf), or the merged copy kept for vLLM (adapter)
        if opts["engine"] == "vllm":
            import tempfile

            from posttrain.rollout.vllm import VLLMEngine, save_for_vllm

            folder = save_for_vllm(plain, tokenizer, Path(tempfile.mkdtemp(prefix="posttrain-vllm-worker-")))
            self.engine = VLLMEngine(str(folder), **opts["vllm"])
            self.model = plain if self.peft is not None else None
        else:
            from posttrain.rollout.hf import HFEngine

            self.model = plain.to(opts["device"]).eval()
            self.engine = HFEngine(self.model, tokenizer, sequences_per_batch=opts["sequences_per_batch"], lean=opts["lean"])
        self._maps: dict = {}  # shared-memory file -> its mapping

    def ready(self):
        import ray

        return os.getpid(), ray.get_runtime_context().get_node_id()

    def generate(self, prompts, params):
        t0 = time.perf_counter()
        out = self.engine.generate(prompts, params)
        return out, time.perf_counter() - t0

    def update_weights(self, state: dict, version: int):  # object_store: Ray resolves the ref to the dict
        t0 = time.perf_counter()
        self.engine.update_weights(state.items(), version)
        return version, time.perf_counter() - t0, _nbytes(state.values())

    def update_weights_shared(self, path: str, size: int, layout: dict, version: int):
        import torch

        t0 = time.perf_counter()
        if path not in self._maps:
            self._maps = {path: torch.from_file(path, shared=True, size=size, dtype=torch.uint8)}  # drop older files
        self.engine.update_weights(_shared_views(self._maps[path], layout), version)
        return version, time.perf_counter() - t0, sum(n for _, n, _, _ in layout.values())

    def update_adapter(self, adapter: dict, version: int):
        import torch

        t0 = time.perf_counter()
        if self.peft is None:
            raise ValueError("adapter sync sent to a worker started without a LoRA policy")
        params = {n: p for n, p in self.peft.named_parameters() if is_adapter_name(n)}
        if set(params) != set(adapter):
            raise ValueError(f"adapter sync: missing {sorted(set(params) - set(adapter))[:3]}, "
                             f"unknown {sorted(set(adapter) - set(params))[:3]}")
        with torch.no_grad():
            for n, v in adapter.items():
                if tuple(v.shape) != tuple(params[n].shape):
                    raise ValueError(f"adapter sync: {n} has shape {tuple(v.shape)}, the worker's adapter {tuple(params[n].shape)}")
                params[n].copy_(v)
        merge_adapter_into(self.peft, self.model)
        if getattr(self.engine, "model", None) is self.model:  # HFEngine
            from posttrain.rollout.base import PolicyWeights

            self.engine.update_weights(PolicyWeights(self.model), version)  # its own module: only the version
        else:  # vLLM: reload the merged model
            self.engine.update_weights(list(self.model.state_dict().items()), version)
        return version, time.perf_counter() - t0, _nbytes(adapter.values())

    def join_group(self, host: str, port: int, rank: int, world: int, gen: int, backend: str, timeout_s: float):
        """Join generation `gen` of the weight-sync group (`posttrain.rollout.collective`)."""
        from posttrain.rollout.collective import Receiver

        self._group = None  # leave an older generation first
        self._group = Receiver(host, port, rank, world, gen, backend, timeout_s, "cuda" if backend == "nccl" else "cpu")
        return rank

    def update_weights_collective(self, layout: list, version: int):
        t0 = time.perf_counter()
        tensors = self._group.receive(layout)
        self.engine.update_weights(tensors, version)
        return version, time.perf_counter() - t0, _nbytes(t for _, t in tensors)

    # -- test hooks -------------------------------------------------------------------------
    def weights(self) -> dict:
        """The engine's model weights (HF engine), for tests."""
        return {k: v.detach().to("cpu").clone() for k, v in self.engine.model.state_dict().items()}

    def sleep_now(self, seconds: float) -> None:  # the worker is busy (a slow call ahead of the next)
        time.sleep(seconds)

    def exit_now(self, code: int = 1) -> None:  # the process dies mid-run, as a crash would
        os._exit(code)


class RayRolloutPool:
    """`RolloutEngine` over Ray actors (see the module docstring). ``engine`` is ``hf`` or ``vllm``
    (``rl.engine``); ``vllm_kwargs`` go to each worker's `VLLMEngine` (e.g. ``kv_cache_memory_bytes``)
    with ``seed`` as its seed; ``transport`` is ``rollout.transport``."""

    def __init__(self, model, tokenizer, workers: int = 2, *, sequences_per_batch: int = 256, lean: bool = True,
                 cpus_per_worker: float = 1.0, gpus_per_worker: float = 0.0, timeout_s: float = 300.0,
                 max_restarts: int = 0, address: str = "", transport: str = "auto", engine: str = "hf",
                 vllm_kwargs: dict | None = None, seed: int = 0):
        if engine not in ENGINES:
            raise ConfigError(f"rollout engine must be one of {', '.join(ENGINES)}, got '{engine}'")
        self.transport = resolve_transport(transport, model)
        ray = import_ray()
        self.ray = ray
        if not ray.is_initialized():
            kwargs = {"address": address} if address else {}
            ray.init(include_dashboard=False, log_to_driver=False, ignore_reinit_error=True, **kwargs)
        from posttrain.rollout.vllm import _plain_model

        sent = model if self.transport == "adapter" else _plain_model(model)  # adapter: the peft copy, merged there
        cpu_copy = copy.deepcopy(sent).to("cpu") if next(sent.parameters()).device.type != "cpu" else sent
        opts = dict(sequences_per_batch=sequences_per_batch, lean=lean, threads=max(1, int(cpus_per_worker)),
                    device="cuda" if gpus_per_worker > 0 else "cpu", engine=engine,
                    vllm={"seed": seed, "dtype": "float32", **(vllm_kwargs or {})})
        self.engine_kind = engine
        self._init_args = (ray.put(cpu_copy), ray.put(tokenizer), opts)
        self._actor_cls = ray.remote(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker)(_RolloutWorker)
        self.timeout_s, self.restarts_left, self.restarts = timeout_s, max_restarts, 0
        self.version, self._replay = 0, None  # the last sync (method, args), replayed on a replacement
        self._shared: SharedWeights | None = None
        self._coll = None  # collective: the trainer's side of the weight-sync group
        self.last_sync_bytes, self._t0 = 0, time.monotonic()
        self.actors = [self._actor_cls.remote(*self._init_args) for _ in range(workers)]
        self._stats = {"generate_s": [0.0] * workers, "sync_s": [0.0] * workers, "sync_bytes": [0] * workers}
        started = self._get_shares({w: a.ready.remote() for w, a in enumerate(self.actors)},
                                   lambda w: self.actors[w].ready.remote(), "start")
        self.pids = {w: pid for w, (pid, _) in started.items()}
        if self.transport == "shared_memory":
            here = ray.get_runtime_context().get_node_id()
            away = sorted(w for w, (_, node) in started.items() if node != here)
            if away:
                self.shutdown()
                raise ConfigError(f"rollout.transport shared_memory: worker(s) {', '.join(map(str, away))} run on another "
                                  "node than the trainer; use rollout.transport object_store")
        if self.transport == "collective":
            import torch

            from posttrain.rollout.collective import Sender

            nccl = gpus_per_worker > 0 and torch.cuda.is_available()
            self._coll = Sender(workers + 1, "nccl" if nccl else "gloo", timeout_s, "cuda" if nccl else "cpu")
            self._join_group()

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
        """Bring every worker to these weights as `version`, over ``self.transport``. For ``adapter``,
        `named_weights` must be the LoRA policy's `PolicyWeights` (its ``source`` is read)."""
        self.version = int(version)
        if self.transport == "adapter":
            source = getattr(named_weights, "source", None)
            problem = "the weights have no LoRA module behind them" if source is None else adapter_only_problem(source)
            if problem:
                raise ConfigError(f"rollout.transport adapter: {problem}; use rollout.transport object_store")
            state = adapter_tensors(source)
            self._replay = ("update_adapter", (self.ray.put(state), self.version))
        else:
            keep = self.transport == "collective"  # packed on the group's device
            state = {k: v.detach() if keep else v.detach().to("cpu") for k, v in named_weights}
            if self.transport == "shared_memory":
                if self._shared is None or not self._shared.fits(state):
                    if self._shared is not None:
                        self._shared.close()
                    self._shared = SharedWeights(state)
                self._shared.write(state)
                s = self._shared
                self._replay = ("update_weights_shared", (s.path, s.size, s.layout, self.version))
            elif self.transport == "collective":
                self._coll.pack(state)  # kept: a replacement gets them by a rebroadcast, not a replay
                self.last_sync_bytes = self._coll.nbytes
                self._broadcast()
                return
            else:
                self._replay = ("update_weights", (self.ray.put(state), self.version))
        self.last_sync_bytes = _nbytes(state.values())
        calls = {w: self._sync_call(w) for w in range(self.workers)}
        self._get_shares(calls, self._sync_call, "update_weights", stat="sync_s")

    def worker_stats(self) -> dict:
        """Per worker, cumulative since the pool started: seconds inside generate (``generate_s``) and
        inside weight loading (``sync_s``), their sum (``busy_s``), bytes of weights received
        (``sync_bytes``); and the pool's age (``uptime_s``)."""
        s = {k: list(v) for k, v in self._stats.items()}
        s["busy_s"] = [g + u for g, u in zip(s["generate_s"], s["sync_s"])]
        s["uptime_s"] = time.monotonic() - self._t0
        return s

    def shutdown(self) -> None:
        for a in self.actors:
            try:
                self.ray.kill(a)
            except Exception:  # already gone
                pass
        self.actors = []
        if self._shared is not None:
            self._shared.close()
            self._shared = None
        self._coll = None

    # -- the collective transport ------------------------------------------------------------
    def _join_group(self) -> None:
        """Every worker and the trainer join a new generation of the weight-sync group."""
        c = self._coll
        gen = c.next_generation()
        calls = {w: a.join_group.remote(c.host, c.port, w + 1, c.world, gen, c.backend, c.timeout_s)
                 for w, a in enumerate(self.actors)}
        try:
            c.connect(self.timeout_s)
        except Exception as e:  # a worker that cannot join: its own error names the cause
            self._get_shares(calls, None, "join the weight-sync group")
            raise RolloutWorkerError(f"weight-sync group: the trainer could not connect: {type(e).__name__}: {e}") from None
        self._get_shares(calls, None, "join the weight-sync group")

    def _broadcast(self, retried: bool = False) -> None:
        """Broadcast the packed weights to every worker, waiting at most ``timeout_s``. A worker that
        dies on the way is replaced (while ``max_restarts`` last): the group is rebuilt and the
        broadcast sent again, once. A failed broadcast closes the group (so no worker waits on it)
        and the next sync rebuilds it; a worker's own error after receiving leaves it as it is."""
        if self._coll.group is None:
            self._join_group()
        calls = {w: self.actors[w].update_weights_collective.remote(self._coll.layout, self.version)
                 for w in range(self.workers)}
        sent_error = None
        try:
            self._coll.broadcast(self.timeout_s)
        except Exception as e:  # a peer gone or late: the workers' own results say which
            sent_error = e
            self._coll.abandon()
        try:
            self._get_shares(calls, None, "update_weights", stat="sync_s")
            if sent_error is None:
                return
            failure = RolloutWorkerError(f"weight broadcast failed: {type(sent_error).__name__}: {sent_error}")
        except RolloutWorkerError as e:
            failure = e
        if failure.died is not None:
            self._coll.abandon()
        dead = self._dead_workers() if sent_error is not None or failure.died is not None else {}
        if retried or not dead or self.restarts_left < len(dead):
            if dead:
                w, cause = next(iter(dead.items()))
                raise RolloutWorkerError(f"rollout worker {w} of {self.workers} died during update_weights: {cause}"
                                         + self._restart_note(), died=w) from None
            raise failure
        for w, cause in dead.items():
            self._replace(w, cause, rejoin=False)
        self._join_group()
        self._broadcast(retried=True)

    def _dead_workers(self) -> dict[int, str]:
        """Worker -> why it died, for the workers whose process is gone."""
        dead = {}
        for w, a in enumerate(self.actors):
            try:
                self.ray.get(a.ready.remote(), timeout=min(10.0, self.timeout_s))
            except self.ray.exceptions.RayActorError as e:
                dead[w] = _death_cause(e)
            except Exception:  # alive but busy past the ping: not replaced
                pass
        return dead

    # -- calls, failures and replacements -----------------------------------------------------
    def _sync_call(self, w: int):
        method, args = self._replay
        return getattr(self.actors[w], method).remote(*args)

    def _generate_call(self, w: int, prompts, idx: list[int], params: SamplingParams):
        sub = replace(params, seeds=tuple(params.seeds[i] for i in idx) if params.seeds is not None else None,
                      seed=None if params.seed is None else params.seed + 7919 * w)
        return self.actors[w].generate.remote([list(prompts[i]) for i in idx], sub)

    def _record(self, w: int, result, stat: str | None):
        """The payload of a worker's result; its seconds (and bytes) added to the worker's stats."""
        if stat is None:
            return result
        self._stats[stat][w] += result[1]
        if stat == "sync_s":
            self._stats["sync_bytes"][w] += result[2]
        return result[0]

    def _get_shares(self, calls: dict, retry, what: str, stat: str | None = None) -> dict:
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
                results[w] = self._record(w, ray.get(ready[0]), stat)
            except ray.exceptions.RayActorError as e:  # the process is gone
                cause = _death_cause(e)
                if retry is not None and self.restarts_left > 0 and w not in retried:
                    self._replace(w, cause)
                    retried.add(w)
                    pending[w] = retry(w)
                    deadline = max(deadline, time.monotonic() + self.timeout_s)
                    continue
                raise RolloutWorkerError(f"rollout worker {w} of {self.workers} died during {what}: {cause}"
                                         + self._restart_note(), died=w) from None
            except ray.exceptions.RayTaskError as e:  # the worker raised: its own exception
                inner = e.cause if getattr(e, "cause", None) is not None else e
                raise RolloutWorkerError(f"rollout worker {w} of {self.workers}: {type(inner).__name__}: {inner}") from None
        return results

    def _restart_note(self) -> str:
        return ("" if self.restarts_left else " (rollout.max_restarts is used up)" if self.restarts else
                " (rollout.max_restarts 0: not restarted)")

    def _replace(self, w: int, cause: str, rejoin: bool = True) -> None:
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
            self.pids[w] = self.ray.get(self.actors[w].ready.remote(), timeout=self.timeout_s)[0]
            if self._coll is not None:  # collective: a new group with it, then the last weights again
                if rejoin:
                    self._join_group()
                    if self._coll.layout:  # weights were synced: send them again
                        self._broadcast(retried=True)
            elif self._replay is not None:  # bring it to the current version
                self._record(w, self.ray.get(self._sync_call(w), timeout=self.timeout_s), "sync_s")
        except Exception as e:
            raise RolloutWorkerError(f"rollout worker {w} of {self.workers}: its replacement failed to start: "
                                     f"{type(e).__name__}: {_death_cause(e)}") from None


class PendingRollout:
    """A generation in flight on the workers (`RayRolloutPool.generate_async`)."""

    def __init__(self, pool: RayRolloutPool, calls: dict, shares: list[list[int]], n: int, retry):
        self.pool, self.calls, self.shares, self.n, self.retry = pool, calls, shares, n, retry

    def result(self) -> list[list[Completion]]:
        results = self.pool._get_shares(self.calls, self.retry, "generate", stat="generate_s")
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
