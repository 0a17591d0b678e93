"""Offline preference optimization: the DPO family (paired) and KTO / BCO (unpaired) in one trainer.

Papers: Rafailov et al. 2023, "Direct Preference Optimization" (the training loop: a frozen
reference, summed response logprobs, chosen and rejected scored together); Ethayarajh et al. 2024,
"KTO" (unpaired rows, the batch KL reference point from mismatched pairs); Jung et al. 2024, "BCO"
(the running reward shift). The objectives themselves live in `posttrain.losses.preference`; each
paper is cited there.

One step takes `pairs_per_step` items in a seeded, resumable order and splits them into
micro-batches of `pairs_per_microbatch`; each micro-batch is ONE forward pass over 2B rows
(chosen rows then rejected rows; for KTO, completions then mismatched KL completions). Per-item
losses are summed and divided by the step's item count, so micro-batch splits add up exactly
(except for batch-coupled losses: KTO's KL point, AOT's sorting, BCO's shift use the micro-batch).

Reference logprobs (reference-based losses only):
- ``cached`` (default): computed once, before the first update, for the items the run will visit,
  and saved in the run folder (``reference_logps.pt``) so a resumed run reuses them; no reference
  model is held while training.
- ``live``: recomputed every step, from a frozen copy (full fine-tuning) or, under LoRA, from the
  same model with the adapter disabled (no second copy).
Reference-free losses (simpo, orpo, sft) never build a reference.

Departures: KTO's KL completions are a fixed, seeded mismatch (item i is paired with the completion
of a permuted item) rather than a per-batch rotation, so their reference logps can be cached.
Paired rows trained with an unpaired loss become two unpaired rows (chosen desirable, rejected not),
as TRL's ``unpair_preference_dataset``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from posttrain.config import ConfigError
from posttrain.checkpoint import restore_checkpoint, torch_save_atomic
from posttrain.errors import UserError
from posttrain.configs import PreferenceConfig, PreferenceOptions  # noqa: F401  (re-exported)
from posttrain.data import DataError
from posttrain.logging import MetricsLogger, console, warn
from posttrain.losses.preference import (
    PREFERENCE_LOSSES, UNPAIRED_LOSSES, PreferenceLogps, UnpairedLogps, combined_loss, preference_needs,
)
from posttrain.models import load_model_and_tokenizer
from posttrain.runtime.worker import PolicyWorker
from posttrain.trainers.common import (
    DataOrder, NullLogger, bind_inputs, check_global_batch, default_verifier, exact_match_eval, save_run_checkpoint,
    seed_everything, start_run, training_loop,
)
from posttrain.trainers.pairs import TokenizedPair, first_divergent_step, load_pairs, pair_batch, sequence_batch, sequence_logps, tokenize_pairs
from posttrain.trainers.pref_data import FallingLogpsMonitor, parse_loss_spec, self_generated_rejections, unpair



class PreferenceTrainer:
    """Offline preference optimization (see the module docstring): the DPO family on paired rows
    (``prompt``, ``chosen``, ``rejected``; implicit prompts too) and KTO / BCO on unpaired rows
    (``prompt``, ``completion``, ``label``). ``cfg.loss`` names the loss or a weighted mix.

    `model`: a name or folder, or a causal LM module given with its `tokenizer`; None loads
    ``cfg.model.name``. `train_data` / `eval_data`: a path (or ``task:NAME``), a list of dicts, or a
    ``datasets.Dataset``; they replace ``cfg.data.path`` / ``cfg.data.eval_path`` (see
    `posttrain.trainers.common.bind_inputs`). Rows from Python are used whole (held-out pairs come
    from `eval_data`); a bad row raises `DataError` naming it (``train_data[2]: field 'rejected'``).
    """

    def __init__(self, cfg: PreferenceConfig, model=None, tokenizer=None, *, train_data=None, eval_data=None):
        cfg, model, train_rows, eval_rows = bind_inputs(cfg, model, train_data, eval_data)
        self.cfg = cfg
        self.losses = parse_loss_spec(cfg.loss)
        self.rt, self.resume_from = start_run(cfg, "dpo", (cfg.model.name,))
        check_global_batch(self.rt, "pref.pairs_per_step", cfg.pref.pairs_per_step)
        seed_everything(cfg.train.seed)
        self.unpaired = any(name in UNPAIRED_LOSSES for name in self.losses)
        self.hp = {k: float(v) for k, v in cfg.pref.loss_args.items()}
        self.uses_reference = any(  # declared with each loss's registration (`PreferenceNeeds.reference`)
            preference_needs(name, UNPAIRED_LOSSES if name in UNPAIRED_LOSSES else PREFERENCE_LOSSES).reference
            for name in self.losses)
        if cfg.pref.reference not in ("cached", "live"):
            raise ConfigError(f"pref.reference must be 'cached' or 'live', got '{cfg.pref.reference}'")
        self._train_rows = load_pairs(cfg.data, "train", source=train_rows)  # the data first: a bad row is reported before any model is loaded
        self._eval_rows = load_pairs(cfg.data, "eval", source=eval_rows)[0]
        self.loaded_model = model is None
        if model is None:
            model, tokenizer = load_model_and_tokenizer(cfg.model.name, trust_remote_code=cfg.model.trust_remote_code, seed=cfg.train.seed)
        self.lora = cfg.model.lora_rank > 0
        self.model, self.tokenizer = model, tokenizer  # the starting policy: self-generated rejections sample from it
        self._load_data()
        self.run_dir = Path(cfg.train.out)
        # LoRA, placement, optimizer; the reference: live (a frozen copy, or under LoRA the adapter
        # disabled) or, for the cache, the policy itself before the first step
        live = self.uses_reference and cfg.pref.reference == "live"
        self.worker = PolicyWorker(model, self.rt, cfg.model, cfg.optim, cfg.train.max_steps,
                                   reference=live or (self.uses_reference and self.lora),
                                   resume_dir=self.run_dir if cfg.train.resume else None, engine=bool(self.eval_examples))
        self.model, self.train_model = self.worker.model, self.worker.train_model
        self.opt, self.sched = self.worker.opt, self.worker.sched
        self.ref_model = None  # a resumed full fine-tuning run's reloaded starting model (`_reference_for_cache`)
        self.order = DataOrder(len(self.items), cfg.train.seed)
        self.step = 0
        self.bco_moments = [0.0, 0]  # running sum and count of BCO rewards (its shift delta)
        self.monitor = FallingLogpsMonitor(cfg.pref.falling_logps_window)
        if cfg.train.resume:
            self._resume()
        self.ref_cache = self._reference_cache() if self.uses_reference and cfg.pref.reference == "cached" else None
        self.logger = (MetricsLogger(self.run_dir, cfg.train.loggers, dataclasses.asdict(cfg), resume=cfg.train.resume)
                       if self.rt.is_main else NullLogger())

    # ------------------------------------------------------------------ data and reference

    def _load_data(self) -> None:
        c = self.cfg
        train, self.task = self._train_rows
        if c.pref.self_generated > 0:
            if self.task is None:
                raise ConfigError("pref.self_generated needs task data (data.path task:NAME) to verify the samples")
            t0 = time.perf_counter()
            train, stats = self_generated_rejections(self.model, self.tokenizer, self.task, train, c.pref.self_generated,
                                                     c.pref.self_generated_temperature, c.pref.eval_max_new_tokens, c.train.seed)
            console.print(f"self-generated rejections: {json.dumps(stats)} in {time.perf_counter() - t0:.1f}s")
        if train[0].kind == "unpaired_preference":
            if not self.unpaired:
                raise DataError(f"{train[0].where}: loss '{c.loss}' needs paired rows (prompt, chosen, rejected); these are unpaired")
            self.items = unpair(self.tokenizer, train, c.data.max_length, c.train.seed)
        else:
            pairs = self._step_pairs(tokenize_pairs(self.tokenizer, train, c.data.max_length))
            self.items = unpair(self.tokenizer, pairs, c.data.max_length, c.train.seed) if self.unpaired else pairs
        evals = [e for e in self._eval_rows if e.kind == "preference"]
        self.eval_pairs = self._step_pairs(tokenize_pairs(self.tokenizer, evals, c.data.max_length)) if evals else []
        self.eval_examples = []
        if self.task is not None and c.data.eval_rows > 0:
            from posttrain.trainers.common import load_split

            self.eval_examples, _ = load_split(c.data, "eval")
        self.verify = default_verifier(self.task) if self.task is not None else None

    def _step_pairs(self, pairs: list[TokenizedPair]) -> list[TokenizedPair]:
        if not self.cfg.pref.step_pairs:
            return pairs
        return [first_divergent_step(p, self.tokenizer, self.cfg.pref.step_sep) for p in pairs]

    def _sequences(self, items) -> tuple[list, list]:
        if isinstance(items[0], TokenizedPair):
            return [p.prompt_ids for p in items] * 2, [p.chosen_ids for p in items] + [p.rejected_ids for p in items]
        kl = "kto" in self.losses
        prompts = [u.prompt_ids for u in items] * (2 if kl else 1)
        return prompts, [u.completion_ids for u in items] + ([u.kl_completion_ids for u in items] if kl else [])

    def _forward(self, model, items) -> tuple[torch.Tensor, torch.Tensor]:
        prompts, responses = self._sequences(items)
        batch = sequence_batch(prompts, responses, self.tokenizer.pad_token_id)
        return sequence_logps(model, batch, self.rt)

    @torch.no_grad()
    def reference_logps(self, items) -> torch.Tensor:
        """(B, k) reference logps of the items' k sequences (chosen, rejected / completion, KL), on the CPU."""
        if self.ref_model is not None:
            logps, _ = self._forward(self.ref_model, items)
        elif self.worker.has_reference:
            with self.worker.reference() as ref:
                logps, _ = self._forward(ref, items)
        else:  # before the first step the policy is the reference
            was_training = self.model.training
            self.model.eval()
            logps, _ = self._forward(self.train_model, items)
            self.model.train(was_training)
        return logps.view(-1, len(items)).T.contiguous().cpu()

    def _fingerprint(self) -> str:
        """What the cached reference logps depend on: the starting model, the data (token ids of every
        item in order), the loss's sequences and the seed of the data order."""
        h = hashlib.sha1(f"{self.cfg.model.name}|{self.cfg.data.max_length}|{self.cfg.loss}|{self.cfg.train.seed}".encode())
        for it in self.items + self.eval_pairs:
            for ids in self._sequences([it])[1]:
                h.update(bytes(str(ids), "ascii"))
        return h.hexdigest()[:16]

    def _reference_cache(self) -> dict:
        """Reference logps of the train items this run visits (for its `max_steps`) and of the eval
        pairs, saved atomically in the run folder. A resumed run reuses them and computes those of
        items it had not planned to visit (a larger `--max-steps`); no cached value is ever NaN."""
        path = self.run_dir / "reference_logps.pt"
        fp = self._fingerprint()
        n = self.cfg.pref.reference_pairs_per_batch
        width = 2 if self.unpaired and "kto" in self.losses or not self.unpaired else 1
        cache = None
        if path.exists() and self.step > 0:
            cache = torch.load(path, weights_only=False)
            if cache["fingerprint"] != fp:
                raise UserError(f"{path}: cached reference logps are for other data or another model; resume the matching run")
        t0 = time.perf_counter()
        with self._reference_for_cache() as ref:
            if cache is None:
                evals = torch.cat([ref(self.eval_pairs[i : i + n]) for i in range(0, len(self.eval_pairs), n)]) if self.eval_pairs else None
                cache = {"fingerprint": fp, "train": torch.full((len(self.items), width), float("nan")), "eval": evals}
            visit = set(DataOrder(len(self.items), self.cfg.train.seed).take(self.cfg.train.max_steps * self.cfg.pref.pairs_per_step))
            missing = sorted(i for i in visit if torch.isnan(cache["train"][i]).any())
            for i in range(0, len(missing), n):
                idx = missing[i : i + n]
                cache["train"][idx] = ref([self.items[j] for j in idx])
        if missing:  # every rank computed the same values (the same passes: a sharded policy needs all ranks)
            if self.rt.is_main:
                console.print(f"reference logps cached for {len(missing)} train items and {len(self.eval_pairs)} eval pairs "
                              f"in {time.perf_counter() - t0:.1f}s")
            self.rt.on_main(lambda: torch_save_atomic(cache, path))
        return cache

    @contextmanager
    def _reference_for_cache(self):
        """A function items -> reference logps. Before the first step the policy is the reference (or
        its adapter-disabled base); a resumed full fine-tuning run reloads its starting model."""
        if self.step == 0 or self.worker.has_reference or self.ref_model is not None:
            yield self.reference_logps
            return
        if self.loaded_model is False:
            raise UserError(f"{self.run_dir}: the reference logps this resumed run needs are not cached, and its starting "
                            "model was passed in from Python; resume through posttrain.cli or pref.reference live")
        console.print(f"reloading the starting model {self.cfg.model.name} to extend the cached reference logps")
        model, _ = load_model_and_tokenizer(self.cfg.model.name, trust_remote_code=self.cfg.model.trust_remote_code, seed=self.cfg.train.seed)
        from posttrain.runtime.worker import place_frozen

        self.ref_model = place_frozen(model.eval().requires_grad_(False), self.rt)
        try:
            yield self.reference_logps
        finally:
            self.ref_model = None

    # ------------------------------------------------------------------ loss

    def _logps_struct(self, items, logps, lengths, ref):
        B = len(items)
        if ref is not None:
            ref = ref.to(logps.device)
        if isinstance(items[0], TokenizedPair):
            c_len, r_len = lengths[:B].to(logps.dtype), lengths[B:].to(logps.dtype)
            return PreferenceLogps(
                chosen_logps=logps[:B], rejected_logps=logps[B:],
                ref_chosen_logps=None if ref is None else ref[:, 0], ref_rejected_logps=None if ref is None else ref[:, 1],
                chosen_lengths=c_len, rejected_lengths=r_len, chosen_nll=-logps[:B] / c_len.clamp(min=1),
            )
        labels = torch.tensor([u.label for u in items], dtype=torch.bool, device=logps.device)
        kl = logps.shape[0] > B
        return UnpairedLogps(
            logps=logps[:B], ref_logps=ref[:, 0], labels=labels,
            kl_logps=logps[B:].detach() if kl else None, ref_kl_logps=ref[:, 1] if kl else None,
        )

    def _apply_loss(self, lp) -> tuple[torch.Tensor, dict]:
        beta = self.cfg.beta
        if len(self.losses) > 1:
            return combined_loss(lp, self.losses, beta, **self.hp)
        (name, weight), = self.losses.items()
        if name in UNPAIRED_LOSSES:
            hp = dict(self.hp)
            if name == "bco":  # running mean of the rewards, updated with this batch first (as TRL); over all ranks
                r = beta * (lp.logps - lp.ref_logps).detach()
                self.bco_moments = [self.bco_moments[0] + self.rt.all_reduce_sum(float(r.sum())),
                                    self.bco_moments[1] + int(self.rt.all_reduce_sum(r.numel()))]
                hp["delta"] = self.bco_moments[0] / self.bco_moments[1]
            loss, stats = UNPAIRED_LOSSES.get(name)(lp, beta=beta, **hp)
        else:
            loss, stats = PREFERENCE_LOSSES.get(name)(lp, beta=beta, **self.hp)
        return weight * loss, stats

    def microbatch_loss(self, idx: list[int], items, num_items: int) -> tuple[torch.Tensor, dict]:
        """Loss of one micro-batch divided by the step's item count, and its stats (floats)."""
        logps, lengths = self._forward(self.train_model, items)
        ref = None
        if self.uses_reference:
            ref = self.ref_cache["train"][idx] if self.ref_cache is not None else self.reference_logps(items)
        lp = self._logps_struct(items, logps, lengths, ref)
        loss, stats = self._apply_loss(lp)
        B = len(items)
        stats = {k: float(v) for k, v in stats.items()}
        if isinstance(lp, PreferenceLogps):
            stats["logps/chosen"] = float(lp.chosen_logps.detach().mean())
            stats["logps/rejected"] = float(lp.rejected_logps.detach().mean())
        else:  # desirable / undesirable completions play chosen / rejected
            lab = lp.labels
            stats["logps/chosen"] = float(lp.logps[lab].detach().mean()) if lab.any() else float("nan")
            stats["logps/rejected"] = float(lp.logps[~lab].detach().mean()) if (~lab).any() else float("nan")
        stats["tokens_per_response"] = float(lengths[:B].float().mean())
        return loss.sum() / num_items, stats

    # ------------------------------------------------------------------ steps

    def train_step(self) -> dict:
        """One optimizer step over ``pref.pairs_per_step`` items; returns its metrics (loss,
        grad_norm, lr, pairs, the loss's rewards/* stats, logps/chosen, logps/rejected)."""
        c, rt = self.cfg, self.rt
        n_global = c.pref.pairs_per_step
        idx_all = rt.shard(self.order.take(n_global))  # this rank's contiguous share of the global batch
        self.model.train()
        totals: dict[str, float] = {}
        loss_sum = 0.0
        starts = range(0, len(idx_all), c.pref.pairs_per_microbatch)
        for k, i in enumerate(starts):
            idx = idx_all[i : i + c.pref.pairs_per_microbatch]
            with self.worker.accumulate(last=k == len(starts) - 1):
                loss, stats = self.microbatch_loss(idx, [self.items[j] for j in idx], n_global)  # / the global count
                self.worker.backward(loss)
            loss_sum += float(loss.detach())
            for key, v in stats.items():
                totals[key] = totals.get(key, 0.0) + v * len(idx) / n_global
        if rt.distributed:  # sums over the ranks' shares (a NaN mean of an empty side stays NaN)
            keys = sorted(totals)
            summed = rt.all_reduce_sum(torch.tensor([loss_sum] + [totals[k] for k in keys], dtype=torch.float64)).tolist()
            loss_sum, totals = summed[0], dict(zip(keys, summed[1:]))
        grad_norm, lr = self.worker.step(self.step, loss_sum, c.optim.max_grad_norm)
        self.step += 1
        self._watch_logps(totals)
        return {"loss": loss_sum, "grad_norm": grad_norm, "lr": lr, "pairs": len(idx_all), **totals}

    def _watch_logps(self, m: dict) -> None:
        msg = self.monitor.update(m["logps/chosen"] / max(1.0, m["tokens_per_response"]), m["logps/rejected"] / max(1.0, m["tokens_per_response"]))
        if msg and self.rt.is_main:
            warn(f"step {self.step}: {msg} (a common silent failure: likelihood displacement; try a smaller lr, "
                 "a larger beta, or a loss with an NLL anchor such as rpo/dpop)")

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Held-out preference accuracy / margins (eval pairs) and exact-match accuracy (tasks)."""
        out = {}
        if self.eval_pairs:
            out.update(self._pair_metrics())
        if self.eval_examples and self.verify is not None:
            with self.rt.autocast():
                res = exact_match_eval(self.worker.engine_model(), self.tokenizer, self.eval_examples, self.verify,
                                       self.cfg.pref.eval_max_new_tokens)
            for prompt, text, answer, ok in res.pop("samples")[:2] if self.rt.is_main else ():
                console.print(f"  eval sample: {json.dumps(prompt)[:80]} -> {text!r} (answer {answer}, {'ok' if ok else 'wrong'})")
            out.update(res)
        return {f"eval/{k}": v for k, v in out.items()}

    def _pair_metrics(self) -> dict:
        """Implicit rewards on held-out pairs: beta * log-ratio (reference-based) or beta * mean logp."""
        self.model.eval()
        n = self.cfg.pref.reference_pairs_per_batch
        rewards, logps_all = [], []
        for i in range(0, len(self.eval_pairs), n):
            chunk = self.eval_pairs[i : i + n]
            logps, lengths = sequence_logps(self.train_model, pair_batch(chunk, self.tokenizer.pad_token_id), self.rt)
            logps, lengths = logps.cpu(), lengths.cpu()
            pair = logps.view(2, -1).T
            if self.uses_reference:
                ref = self.ref_cache["eval"][i : i + n] if self.ref_cache is not None else self.reference_logps(chunk)
                rewards.append(self.cfg.beta * (pair - ref))
            else:
                rewards.append(self.cfg.beta * pair / lengths.view(2, -1).T.clamp(min=1))
            logps_all.append(pair)
        r, lp = torch.cat(rewards), torch.cat(logps_all)
        self.model.train()
        return {"rewards/accuracy": float((r[:, 0] > r[:, 1]).float().mean()), "rewards/margin": float((r[:, 0] - r[:, 1]).mean()),
                "logps/chosen": float(lp[:, 0].mean()), "logps/rejected": float(lp[:, 1].mean())}

    # ------------------------------------------------------------------ checkpoints and loop

    def _resume(self) -> None:
        rt = self.rt
        st = restore_checkpoint(self.run_dir, self.model, self.opt, self.sched, self.cfg.optim.lr, weights=False,
                                load_optimizer=self.worker.load_optimizer, rank=rt.rank, world_size=rt.world_size,
                                verbose=rt.is_main)
        self.order = DataOrder(len(self.items), self.cfg.train.seed, **st["data"])
        self.bco_moments = list(st["bco_moments"])
        self.monitor.history = list(st["monitor"])
        self.step = st["step"]

    def save(self) -> Path:
        """Checkpoint the current step into ``out/checkpoints/step-NNNNNNN`` (model or LoRA adapter,
        tokenizer, optimizer, schedule, data position, BCO shift); returns its folder. Collective under
        data parallelism: every rank calls it, rank 0 writes."""
        return save_run_checkpoint(self, self.cfg.train.keep_checkpoints,
                                   {"bco_moments": self.bco_moments, "monitor": self.monitor.history})

    def describe(self) -> dict:
        """The run's derived sizes: losses, reference, parameters, items, epochs."""
        c = self.cfg
        return {
            "losses": self.losses, "reference": c.pref.reference if self.uses_reference else "none (reference-free)",
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "trainable_parameters": sum(p.numel() for p in self.model.parameters() if p.requires_grad),
            "train_items": len(self.items), "unpaired": self.unpaired, "eval_pairs": len(self.eval_pairs),
            "eval_examples": len(self.eval_examples), "forward_rows_per_microbatch": 2 * c.pref.pairs_per_microbatch,
            "epochs": c.train.max_steps * c.pref.pairs_per_step / max(1, len(self.items)),
        }

    def train(self) -> dict:
        """Evaluate before (``pref.eval_before``), train to ``train.max_steps``, evaluate, save; returns
        the last step's metrics, ``eval_before/*``, the final ``eval/*`` and ``checkpoint``."""
        c = self.cfg
        if self.rt.is_main:
            console.print(f"dpo config: {json.dumps(dataclasses.asdict(c), default=str)}")
            console.print(f"dpo sizes: {json.dumps(self.describe())}")
        before = {}
        if c.pref.eval_before and self.step == 0:
            before = {k.replace("eval/", "eval_before/"): v for k, v in self.evaluate().items()}
            if before:
                self.logger.log(before, 0)
                if self.rt.is_main:
                    console.print(f"eval before: {json.dumps({k: round(v, 4) for k, v in before.items()})}")
        bar = lambda m: {"loss": m["loss"], "acc": m.get("rewards/accuracies", float("nan"))}  # noqa: E731
        out = training_loop(self, c.train, "dpo", "pairs", bar)
        path = self.save()
        self.logger.close()
        return {**out, **before, "checkpoint": str(path)}


def run_preference_stage(model, tokenizer, cfg: PreferenceConfig) -> dict:
    """Demo hook: train `model` in place with `cfg`; the result holds eval_before/* and eval/* metrics
    (held-out exact-match accuracy, preference accuracy) and the checkpoint path."""
    return PreferenceTrainer(cfg, model, tokenizer).train()


HELP = "offline preference optimization: DPO, IPO, SimPO, ORPO, KTO, ... (--loss NAME)"
CONFIG = PreferenceConfig


def run(cfg: PreferenceConfig) -> dict:
    return PreferenceTrainer(cfg).train()
