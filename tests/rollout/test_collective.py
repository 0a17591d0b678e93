"""The ``collective`` weight-sync transport (`posttrain.rollout.collective`, gloo on CPU): the bucket
plan, a broadcast between two processes that arrives bit-exact over several buckets and dtypes, and a
Ray pool whose worker dies before a sync: reported with its cause, or replaced, the group rebuilt and
the weights sent again."""
import multiprocessing as mp
import time

import pytest
import torch

from posttrain.rollout.collective import Receiver, Sender, plan


def _state():
    g = torch.Generator().manual_seed(0)
    return {"a": torch.randn(3, 4, generator=g), "b": torch.arange(10, dtype=torch.int64),
            "c": torch.randn(50, generator=g), "d": torch.randn(2, 2, generator=g).to(torch.float16)}


def test_plan_buckets_by_dtype_and_size():
    buckets = plan(_state(), bucket_bytes=100)  # 25 float32s per bucket
    assert [(b["dtype"], b["numel"]) for b in buckets] == [("float32", 12), ("int64", 10), ("float32", 50), ("float16", 4)]
    assert buckets[0]["items"] == [("a", 0, (3, 4))] and buckets[2]["items"] == [("c", 0, (50,))]  # c alone: larger than a bucket
    one = plan(_state())
    assert [(b["dtype"], b["numel"]) for b in one] == [("float32", 62), ("int64", 10), ("float16", 4)]
    assert one[0]["items"] == [("a", 0, (3, 4)), ("c", 12, (50,))]


def _receive(port, out):
    r = Receiver("127.0.0.1", port, 1, 2, 0, "gloo", 30.0)
    got = dict(r.receive(plan(_state(), bucket_bytes=100)))
    out.put({k: v.clone() for k, v in got.items()})


def test_a_broadcast_arrives_bit_exact_over_several_buckets():
    s = Sender(2, "gloo", 30.0, bucket_bytes=100)
    s.host = "127.0.0.1"
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_receive, args=(s.port, q))
    p.start()
    try:
        s.next_generation()
        s.connect()
        layout = s.pack(_state())
        assert len(layout) == 4 and s.nbytes == 12 * 4 + 10 * 8 + 50 * 4 + 4 * 2
        s.broadcast(10.0)
        got = q.get(timeout=30)
    finally:
        p.join(30)
    want = _state()
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) and got[k].dtype == want[k].dtype for k in want)


ray = pytest.importorskip("ray")


def test_a_worker_dead_before_a_broadcast_is_named_or_replaced(cluster):
    from posttrain.data import encode_prompt
    from posttrain.models import load_model_and_tokenizer
    from posttrain.rollout import HFEngine, PolicyWeights, SamplingParams
    from posttrain.rollout.ray_pool import RayRolloutPool, RolloutWorkerError

    model, tok = load_model_and_tokenizer("tiny-llama:d=32,l=2,h=2", seed=0)
    new = load_model_and_tokenizer("tiny-llama:d=32,l=2,h=2", seed=1)[0]
    prompts = [encode_prompt(tok, f"{a}+{a}=") for a in range(4)]
    greedy = SamplingParams(n=1, temperature=0.0, max_new_tokens=5)
    pool = RayRolloutPool(model, tok, workers=2, cpus_per_worker=1, transport="collective", timeout_s=30)
    try:
        pool.actors[1].exit_now.remote()
        time.sleep(1)
        t0 = time.perf_counter()
        with pytest.raises(RolloutWorkerError, match=r"rollout worker 1 of 2 died during update_weights: .*not restarted"):
            pool.update_weights(PolicyWeights(new), 1)
        assert time.perf_counter() - t0 < 60
    finally:
        pool.shutdown()
    pool = RayRolloutPool(model, tok, workers=2, cpus_per_worker=1, transport="collective", timeout_s=30, max_restarts=1)
    try:
        gen0 = pool._coll.generation
        pool.actors[0].exit_now.remote()
        time.sleep(1)
        pool.update_weights(PolicyWeights(new), 4)  # worker 0 replaced, the group rebuilt, the weights sent again
        assert pool.restarts == 1 and pool._coll.generation == gen0 + 1
        out = pool.generate(prompts, greedy)
        assert [g[0].token_ids for g in out] == [g[0].token_ids for g in HFEngine(new, tok).generate(prompts, greedy)]
        assert {g[0].policy_version for g in out} == {4}
    finally:
        pool.shutdown()
