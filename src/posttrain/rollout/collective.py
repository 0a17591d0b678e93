"""Weight sync by broadcast over a process group of its own: the trainer is rank 0, rollout worker w
is rank w + 1 (the ``collective`` transport of `posttrain.rollout.ray_pool`).

verl and OpenRLHF sync their rollout engines this way: the trainer and the engines form a NCCL group
next to the training one and the trainer broadcasts every tensor from rank 0. Here the group is a
bare `torch.distributed` process group object (``ProcessGroupGloo`` / ``ProcessGroupNCCL`` built on a
`TCPStore` that the trainer hosts), not the default group, so it coexists with a torchrun job's own
group and needs no ``init_process_group`` in the workers. The backend is ``gloo`` for CPU tensors
and ``nccl`` for GPU ones (trainer and workers on distinct GPUs: NCCL refuses two ranks on one
device).

What travels: the tensors are packed by dtype into flat buckets of at most ``bucket_bytes`` (a larger
tensor gets a bucket of its own), one broadcast per bucket; the layout (names, offsets, shapes) goes
to the workers with the call that makes them receive. The trainer keeps its packed buckets, so a
replaced worker (``rollout.max_restarts``) gets the current version by a rebroadcast over a rebuilt
group, and bytes are copied, never converted: the workers hold exactly the sent weights.

Every group operation has the timeout it was built with: a peer that died makes the others' calls
fail (a closed connection at once, else at the timeout) instead of hanging.

Tested with gloo on CPU (`tests/rollout/test_collective.py`); the nccl backend is the same code with
CUDA buffers and has not run here: there is no GPU on this machine, and a one-GPU machine cannot
hold a two-rank NCCL group.
"""
from __future__ import annotations

import datetime
import math
import socket

import torch
import torch.distributed as dist

BUCKET_BYTES = 256 << 20


def plan(state: dict, bucket_bytes: int = BUCKET_BYTES) -> list[dict]:
    """The buckets of `state` (name -> tensor), in its order: ``[{"dtype", "numel", "items": [(name,
    offset, shape)]}]``, each of one dtype and at most `bucket_bytes` (a larger tensor alone)."""
    buckets: list[dict] = []
    open_: dict[str, dict] = {}
    for name, t in state.items():
        key = str(t.dtype).removeprefix("torch.")
        b = open_.get(key)
        if b is None or (b["items"] and (b["numel"] + t.numel()) * t.element_size() > bucket_bytes):
            b = open_[key] = {"dtype": key, "numel": 0, "items": []}
            buckets.append(b)
        b["items"].append((name, b["numel"], tuple(t.shape)))
        b["numel"] += t.numel()
    return buckets


def _views(buf: torch.Tensor, bucket: dict) -> list[tuple[str, torch.Tensor]]:
    return [(name, buf[off: off + math.prod(shape)].view(shape)) for name, off, shape in bucket["items"]]


def host_address() -> str:
    """This node's address for the workers to reach the group's store (Ray's view when Ray runs)."""
    try:
        import ray

        if ray.is_initialized():
            return ray.util.get_node_ip_address()
    except ImportError:
        pass
    return socket.gethostbyname(socket.gethostname())


class _Group:
    def __init__(self, store, rank: int, world: int, backend: str, timeout_s: float):
        timeout = datetime.timedelta(seconds=timeout_s)
        if backend == "nccl":
            opts = dist.ProcessGroupNCCL.Options()
            opts._timeout = timeout
            self.pg = dist.ProcessGroupNCCL(store, rank, world, opts)
        elif backend == "gloo":
            self.pg = dist.ProcessGroupGloo(store, rank, world, timeout)
        else:
            raise ValueError(f"weight-sync backend must be gloo or nccl, got {backend!r}")

    def broadcast(self, t: torch.Tensor, timeout_s: float | None = None) -> None:
        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        work = self.pg.broadcast([t], opts)
        if timeout_s is None:
            work.wait()
        else:
            work.wait(datetime.timedelta(seconds=timeout_s))


class Sender:
    """The trainer's side (rank 0): hosts the store; `connect` joins generation `gen` of the group
    (every worker must join it at the same time); `pack` + `broadcast` send a state."""

    def __init__(self, world: int, backend: str = "gloo", timeout_s: float = 300.0, device: str = "cpu",
                 bucket_bytes: int = BUCKET_BYTES):
        self.world, self.backend, self.timeout_s, self.device = world, backend, timeout_s, device
        self.bucket_bytes = bucket_bytes
        self.host = host_address()
        self.store = dist.TCPStore(self.host, 0, world, is_master=True, wait_for_workers=False,
                                   timeout=datetime.timedelta(seconds=timeout_s))
        self.port = self.store.port
        self.generation = -1
        self.group: _Group | None = None
        self.layout: list[dict] = []
        self.buffers: list[torch.Tensor] = []

    def next_generation(self) -> int:
        self.generation += 1
        return self.generation

    def connect(self, timeout_s: float | None = None) -> None:
        """Build this generation's group (blocks until every rank has joined, at most `timeout_s`, else
        the sender's timeout; the group's operations keep that timeout)."""
        self.group = None
        self.group = _Group(dist.PrefixStore(f"sync{self.generation}", self.store), 0, self.world, self.backend,
                            timeout_s or self.timeout_s)

    def pack(self, state: dict) -> list[dict]:
        """Copy `state` into the send buckets (kept for a rebroadcast); returns the layout."""
        layout = plan(state, self.bucket_bytes)
        if layout != self.layout:
            self.layout = layout
            self.buffers = [torch.empty(b["numel"], dtype=getattr(torch, b["dtype"]), device=self.device) for b in layout]
        with torch.no_grad():
            for buf, b in zip(self.buffers, layout):
                for (name, view) in _views(buf, b):
                    view.copy_(state[name])
        return layout

    def abandon(self) -> None:
        """Close this generation's group: ranks still waiting in it fail at once instead of at the timeout."""
        if self.group is not None:
            pg, self.group = self.group.pg, None
            try:
                pg.abort()
            except Exception:  # already broken
                pass

    @property
    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.buffers)

    def broadcast(self, timeout_s: float | None = None) -> None:
        """Send the packed buckets (each broadcast waits at most `timeout_s`, else the group's timeout)."""
        for buf in self.buffers:
            self.group.broadcast(buf, timeout_s)


class Receiver:
    """A worker's side (rank w + 1) of generation `gen` of the group at ``host:port``."""

    def __init__(self, host: str, port: int, rank: int, world: int, gen: int, backend: str = "gloo",
                 timeout_s: float = 300.0, device: str = "cpu"):
        store = dist.TCPStore(host, port, world, is_master=False, timeout=datetime.timedelta(seconds=timeout_s))
        self.group = _Group(dist.PrefixStore(f"sync{gen}", store), rank, world, backend, timeout_s)
        self.device = device

    def receive(self, layout: list[dict]) -> list[tuple[str, torch.Tensor]]:
        """The broadcast tensors, as (name, view of its received bucket)."""
        out = []
        for b in layout:
            buf = torch.empty(b["numel"], dtype=getattr(torch, b["dtype"]), device=self.device)
            self.group.broadcast(buf)
            out += _views(buf, b)
        return out
