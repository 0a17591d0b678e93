"""The runtime: which device, which dtypes, which rank of how many. The one place that touches
`torch.distributed` and CUDA.

`init_runtime(RuntimeConfig) -> Runtime` is called once per trainer, before the run folder is
touched. Everything a trainer needs from the process group goes through the frozen `Runtime` it
returns, so the single-process CPU path (the default) never imports a launcher or opens a socket,
and a trainer is written once for 1 or N ranks:

- **Ranks** come from the launcher's environment (``torchrun`` sets ``RANK``, ``WORLD_SIZE``,
  ``LOCAL_RANK``); there is no rank option. Without them the run is one process (rank 0 of 1), even
  with ``--runtime.parallel ddp``: one data-parallel rank *is* the single-process update, so nothing
  is wrapped. Under torchrun with ``parallel none`` the run is refused (N independent copies would
  write the same run folder).
- **Backend**: gloo for CPU ranks, nccl for CUDA ranks, with ``timeout_s`` on every collective, so a
  rank that dies leaves the others failing with a timeout rather than hanging (torchrun also stops the
  job as soon as one worker exits non-zero; `posttrain.cli` prefixes a rank's error with its rank).
- **Device**: ``auto`` is ``cuda:LOCAL_RANK`` when CUDA is present, else the CPU; ``cuda`` under
  torchrun means each rank's own GPU; ``cuda:N`` is taken as given (one rank per process).
- **Dtypes**: parameters, gradients and optimizer state stay fp32 (``param_dtype``); ``bf16`` sets
  ``compute_dtype`` and the trainers run forward passes under `Runtime.autocast` (bf16 matmuls, fp32
  reductions, fp32 logits via `posttrain.runtime.parallel.keep_fp32`): the usual mixed-precision
  recipe (Micikevicius et al. 2018, "Mixed Precision Training", with bf16 needing no loss scaling).
- **bf16 on a CPU** is only fast with native bf16 dot products (AVX512_BF16 or AMX on x86;
  `torch.cpu._is_avx512_bf16_supported` / `_is_amx_tile_supported`). Without them oneDNN emulates
  bf16 and matmuls run several times slower than fp32, so `init_runtime` warns instead of letting a
  run silently take 10x longer. The capability flags do not always predict speed (a virtual machine
  can report AVX512_BF16 that is then slow), so a 64 ms timing probe (`cpu_bf16_slowdown`, a
  256x256 matmul in each dtype) decides: bf16 slower than fp32 by more than 1.5x warns, with both
  numbers.

Helpers: `Runtime.is_main`, `all_reduce_sum` (tensor or float; a no-op alone), `shard` (this rank's
share of a list, contiguous by default — see its docstring), `all_gather_cat`, `gather_object`, `broadcast_object`,
`barrier`, `on_main` (run a side effect on rank 0 and share its result or its error), `rng_state` /
`set_rng_state` (torch, CUDA when initialised, Python, NumPy), `destroy`.
"""
from __future__ import annotations

import datetime
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from posttrain.config import ConfigError
from posttrain.configs import RuntimeConfig


@dataclass(frozen=True)
class Runtime:
    """Where this process computes and which rank it is (see the module docstring)."""

    device: torch.device = torch.device("cpu")
    param_dtype: torch.dtype = torch.float32  # master weights, gradients, optimizer state
    compute_dtype: torch.dtype = torch.float32  # matmuls under `autocast`
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    parallel: str = "none"  # none | ddp | fsdp2 (none whenever world_size is 1)
    timeout_s: float = 300.0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def grad_scale(self) -> float:
        """Factor on every backward loss: DDP and FSDP2 *average* gradients over ranks, while the
        trainers' losses are already divided by a global normalizer (tokens or pairs of the whole
        global batch), so each rank's loss is multiplied by the world size to make the average a sum."""
        return float(self.world_size)

    def autocast(self):
        """The forward-pass context: bf16 autocast when ``compute_dtype`` is bf16, else nothing."""
        if self.compute_dtype == torch.float32:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.compute_dtype)

    # -- collectives (all no-ops in a world of one) -------------------------------------------
    def all_reduce_sum(self, value):
        """Sum of `value` over ranks: a tensor (reduced in place and returned) or a number (a float
        comes back; summed in float64, so integer counts stay exact)."""
        if not self.distributed:
            return value
        import torch.distributed as dist

        if isinstance(value, torch.Tensor):
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
            return value
        t = torch.tensor([float(value)], dtype=torch.float64, device=self._comm_device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return float(t.item())

    def shard(self, items: Sequence, mode: str = "contiguous") -> list:
        """This rank's share of `items` (the same list on every rank, e.g. a step's global batch).

        ``contiguous`` (default): rank r takes ``items[r*k:(r+1)*k]`` with k = len/world_size, so the
        ranks' shares, concatenated in rank order, are the global batch in its order (what a
        single-process run with the same global batch sees). ``strided``: rank r takes
        ``items[r::world_size]`` (a round-robin deal; shares differ in length by at most one).
        Contiguous shares need len(items) divisible by the world size (the trainers check this as a
        config error up front: ranks with unequal micro-batch counts would deadlock under FSDP2)."""
        items = list(items)
        if not self.distributed:
            return items
        if mode == "strided":
            return items[self.rank :: self.world_size]
        if mode != "contiguous":
            raise ValueError(f"shard mode must be 'contiguous' or 'strided', got {mode!r}")
        if len(items) % self.world_size:
            raise ValueError(f"cannot split {len(items)} items evenly across {self.world_size} ranks")
        k = len(items) // self.world_size
        return items[self.rank * k : (self.rank + 1) * k]

    def all_gather_cat(self, t: torch.Tensor) -> torch.Tensor:
        """Every rank's `t` (the same shape on every rank) concatenated along dim 0 in rank order
        (`t` itself alone). Bool tensors travel as uint8 (gloo has no bool all-gather)."""
        if not self.distributed:
            return t
        import torch.distributed as dist

        send = t.to(torch.uint8) if t.dtype == torch.bool else t.contiguous()
        parts = [torch.empty_like(send) for _ in range(self.world_size)]
        dist.all_gather(parts, send)
        out = torch.cat(parts)
        return out.bool() if t.dtype == torch.bool else out

    def gather_object(self, obj) -> list:
        """`obj` of every rank, in rank order, on every rank (``[obj]`` alone)."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out: list = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj, src: int = 0):
        """Rank `src`'s `obj` on every rank."""
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def on_main(self, fn: Callable[[], Any]):
        """Run `fn` on rank 0 only (a side effect such as preparing the run folder) and return its
        result on every rank. An exception on rank 0 is re-raised there and, as the same type when it
        is a `UserError` (else RuntimeError), on the other ranks with "rank 0: ..." — so no rank waits
        for a rank that already failed."""
        if not self.distributed:
            return fn()
        result, error = None, None
        if self.is_main:
            try:
                result = fn()
            except BaseException as e:  # shared, then re-raised below
                error = e
        shared = self.broadcast_object((result, None if error is None else (type(error).__name__, str(error), _is_user_error(error))))
        if error is not None:
            raise error
        result, err = shared
        if err is not None:
            from posttrain.errors import UserError

            name, msg, user = err
            raise (UserError if user else RuntimeError)(f"rank 0 failed ({name}): {msg}")
        return result

    @property
    def _comm_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    def destroy(self) -> None:
        """Leave the process group (if this runtime joined one)."""
        if self.distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def _is_user_error(e: BaseException) -> bool:
    from posttrain.errors import UserError

    return isinstance(e, UserError)


def _env_int(name: str, default: int) -> int:
    v = os.environ.get(name)
    try:
        return int(v) if v not in (None, "") else default
    except ValueError:
        raise ConfigError(f"environment variable {name}={v!r} is not an integer") from None


def resolve_device(spec: str, local_rank: int = 0, world_size: int = 1) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` -> a torch.device (checked against the machine)."""
    spec = (spec or "auto").strip().lower()
    has_cuda = torch.cuda.is_available()
    if spec == "auto":
        spec = "cuda" if has_cuda else "cpu"
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not has_cuda:
            raise ConfigError(f"runtime.device={spec}: CUDA is not available on this machine (torch {torch.__version__}); use cpu or auto")
        index = local_rank if spec == "cuda" else spec.split(":", 1)[1]
        try:
            index = int(index)
        except ValueError:
            raise ConfigError(f"runtime.device={spec}: expected cuda:N with N an integer") from None
        if index >= torch.cuda.device_count():
            raise ConfigError(f"runtime.device={spec}: this machine has {torch.cuda.device_count()} CUDA devices")
        if world_size > 1 and spec.startswith("cuda:"):
            raise ConfigError(f"runtime.device={spec} under torchrun: every rank would use the same GPU; use cuda (each rank its LOCAL_RANK)")
        return torch.device("cuda", index)
    raise ConfigError(f"runtime.device={spec!r}: expected auto, cpu, cuda or cuda:N")


_PROBE_CACHE: dict[str, float] = {}


def cpu_bf16_slowdown(size: int = 256, repeats: int = 4) -> float:
    """Time of a bf16 CPU matmul over an fp32 one (best of `repeats`; about 1 on CPUs with native
    bf16 dot products, 3-20 where oneDNN emulates them). Cached per process."""
    if "ratio" in _PROBE_CACHE:
        return _PROBE_CACHE["ratio"]
    g = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=g)
    times = {}
    for dtype in (torch.float32, torch.bfloat16):
        x = a.to(dtype)
        x @ x  # warm-up (oneDNN primitive creation)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(4):
                x @ x
            best = min(best, time.perf_counter() - t0)
        times[dtype] = best
    _PROBE_CACHE["ratio"] = times[torch.bfloat16] / max(times[torch.float32], 1e-9)
    return _PROBE_CACHE["ratio"]


def check_cpu_bf16() -> str | None:
    """A warning text when bf16 on this CPU is slow (see the module docstring), else None."""
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    ratio = cpu_bf16_slowdown()
    if ratio <= 1.5:
        return None
    flags = "reports AVX512_BF16/AMX" if native else "has no native bf16 (no AVX512_BF16, no AMX)"
    return (f"runtime.dtype=bf16 on this CPU ({torch.backends.cpu.get_cpu_capability()}, {flags}): a bf16 matmul took "
            f"{ratio:.1f}x as long as fp32 in a timing probe, so this run will be slower than fp32, not faster; "
            "use --runtime.dtype fp32 on this machine, or a GPU")


def init_runtime(cfg: RuntimeConfig | None = None) -> Runtime:
    """The `Runtime` of this process: joins the torchrun process group when ``WORLD_SIZE`` > 1 (gloo
    on CPU, nccl on CUDA, ``cfg.timeout_s`` per collective), picks and sets the device, checks bf16."""
    cfg = cfg or RuntimeConfig()
    world = _env_int("WORLD_SIZE", 1)
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if world > 1 and cfg.parallel == "none":
        raise ConfigError(f"running as rank {rank} of {world} (torchrun) with runtime.parallel=none: every rank would train its own "
                          "copy into the same run folder; pass --runtime.parallel ddp or fsdp2")
    device = resolve_device(cfg.device, local_rank, world)
    compute = torch.bfloat16 if cfg.dtype == "bf16" else torch.float32
    if device.type == "cuda":
        torch.cuda.set_device(device)
        if compute == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            raise ConfigError(f"runtime.dtype=bf16: {torch.cuda.get_device_name(device)} has no bf16 support; use fp32")
    elif compute == torch.bfloat16:
        msg = check_cpu_bf16()
        if msg and rank == 0:
            from posttrain.logging import warn

            warn(msg)
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            kwargs = {"device_id": device} if device.type == "cuda" else {}
            dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=cfg.timeout_s), **kwargs)
        if dist.get_world_size() != world or dist.get_rank() != rank:
            raise RuntimeError(f"process group (rank {dist.get_rank()} of {dist.get_world_size()}) disagrees with RANK={rank} WORLD_SIZE={world}")
    return Runtime(device=device, param_dtype=torch.float32, compute_dtype=compute, rank=rank, world_size=world,
                   local_rank=local_rank, parallel=cfg.parallel if world > 1 else "none", timeout_s=cfg.timeout_s)


def rng_state() -> dict:
    """Every RNG a run draws from: torch (CPU), CUDA (all devices, when initialised), Python, NumPy."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def fail_point(rt: Runtime, where: str) -> None:
    """A test-only fault injector: raises on the rank named by ``POSTTRAIN_TEST_FAIL_RANK`` when
    ``POSTTRAIN_TEST_FAIL_AT`` equals `where` (e.g. ``step-2``). Unset (always, outside the tests of
    `tests/runtime`): one dictionary lookup."""
    target = os.environ.get("POSTTRAIN_TEST_FAIL_RANK")
    if target is not None and int(target) == rt.rank and os.environ.get("POSTTRAIN_TEST_FAIL_AT", "") == where:
        raise RuntimeError(f"injected failure on rank {rt.rank} at {where} (POSTTRAIN_TEST_FAIL_RANK)")
