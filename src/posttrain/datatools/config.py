"""Options of `posttrain data` (torch-free: `posttrain data --help` reads them without importing torch).

A field's trailing ``# comment`` is its ``--help`` line; ``Literal`` lists choices, ``ranged`` bounds.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from posttrain.config import ranged

CMDS = ("passrate", "filter", "dedup", "decontaminate", "select", "transcripts")


@dataclass(frozen=True)
class DataIn:
    path: str = ""  # the rows: a jsonl/json/parquet/csv file, a datasets folder, or task:NAME[:k=v,...] (generated)
    kind: str = ""  # row format; empty: detect from the columns (language_modeling, prompt_only, prompt_completion, preference, unpaired_preference, stepwise, verifiable)
    columns: dict[str, str] = field(default_factory=dict)  # rename source columns: question=prompt,answer=answer (written rows keep the source names)
    on_error: Literal["raise", "skip"] = "raise"  # a bad row stops the run, or is skipped, counted and not written
    limit: int = ranged(0, ge=0)  # first N rows (0: all; task data: 1000 generated)
    root: str = ""  # data root of --benchmark files; empty: $POSTTRAIN_DATA, else ../shared/data from the CWD


@dataclass(frozen=True)
class DataModel:
    name: str = "smollm2-135m-instruct"  # passrate: the policy sampled; filter with length_unit=tokens, transcripts: its tokenizer
    trust_remote_code: bool = False  # run a local model's own modelling code (only for folders you trust)


@dataclass(frozen=True)
class PassRateOptions:
    k: int = ranged(8, gt=0)  # sampled completions per prompt
    temperature: float = ranged(1.0, gt=0)  # sampling temperature (1.0: what `posttrain rl` samples at)
    top_p: float = ranged(1.0, gt=0, le=1)  # nucleus sampling
    max_new_tokens: int = ranged(512, gt=0)  # tokens per completion
    checker: str = ""  # math|exact|numeric|task:SPEC; empty: the task's verifier for task: data, else math
    template: str = ""  # prompt template with a {prompt} placeholder (applied to the text, or the last user message)
    chat: bool = False  # send a text prompt as one user message, through the tokenizer's chat template
    max_prompt_tokens: int = ranged(4096, ge=0)  # longer prompts are skipped (pass_rate null), capped at the model's positions
    prompts_per_batch: int = ranged(8, gt=0)  # prompts decoded together (and written to samples.jsonl together)
    sequences_per_batch: int = ranged(32, gt=0)  # sequences per engine batch


@dataclass(frozen=True)
class FilterOptions:
    min_pass_rate: float | None = ranged(None, ge=0, le=1)  # lower end of the pass_rate band (unset: none)
    max_pass_rate: float | None = ranged(None, ge=0, le=1)  # upper end of the pass_rate band (unset: none)
    band: Literal["inclusive", "exclusive", "exclusive_min", "exclusive_max"] = "inclusive"  # which ends of the band are open: exclusive gives min < p < max
    length_of: Literal["prompt", "completion", "all"] = "prompt"  # text whose length is bounded (completion: completion, chosen, steps or answer)
    length_unit: Literal["chars", "words", "tokens"] = "chars"  # length unit; tokens: of --model's tokenizer
    min_length: int = ranged(0, ge=0)  # shortest length kept (0: no bound)
    max_length: int = ranged(0, ge=0)  # longest length kept (0: no bound)
    where: tuple[str, ...] = ()  # numeric conditions on columns, all must hold: "col>=3,col2<10" (>= <= > < == !=)


@dataclass(frozen=True)
class DedupOptions:
    fields: tuple[str, ...] = ()  # fields compared (names after data.columns); empty: the prompt, or all the text of rows without one
    exact: bool = True  # remove rows whose normalized text (lowercase, no punctuation) hashes the same
    near: bool = True  # remove near-duplicates: MinHash over word shingles, LSH, exact Jaccard check
    threshold: float = ranged(0.7, gt=0, le=1)  # Jaccard similarity of the shingle sets from which two rows are near-duplicates
    shingle: int = ranged(3, gt=0)  # words per shingle
    num_perm: int = ranged(128, ge=8)  # MinHash permutations (signature length)


@dataclass(frozen=True)
class DecontamOptions:
    n: int = ranged(13, gt=0)  # words per n-gram (GPT-3's 13)
    min_n: int = ranged(8, gt=0)  # a test problem shorter than n words is matched whole if it has at least this many words
    against: tuple[str, ...] = ()  # test files checked beside --benchmark (every text column of each row)
    fields: tuple[str, ...] = ()  # training fields checked (names after data.columns); empty: every text column
    max_benchmark_freq: int = ranged(10, ge=1)  # an n-gram in more test problems than this is template text and ignored
    min_coverage: float = ranged(0.0, ge=0, le=1)  # flag a row only when its shared n-grams are at least this share of the problem's (0: any)


@dataclass(frozen=True)
class SelectOptions:
    method: Literal["s1", "limr"] = "s1"  # s1: quality, difficulty, diversity (s1 / LIMO); limr: LIMR learning-impact score
    n: int = ranged(1000, ge=0)  # rows selected at most (0: every row that qualifies)
    correct_column: str = "correct"  # s1: rows where this column is false are dropped (a column no row has: not applied)
    checker: str = ""  # s1: check each row's completion against its answer: math|exact|numeric|task:SPEC (empty: no check)
    max_pass_rate: float = ranged(0.5, ge=0, le=1)  # s1: drop rows the base model solves more often than this (pass_rate column)
    unsolved: Literal["last", "drop"] = "last"  # s1: rows with pass_rate 0 come after every sometimes-solved row, or are dropped
    diversity_column: str = ""  # s1: spread the selection over this column's values (MATH: type); empty: clusters of similar text (word-set Jaccard)
    cluster_threshold: float = ranged(0.5, gt=0, le=1)  # s1 without diversity_column: word-set Jaccard that puts two rows in one cluster
    history: str = ""  # limr: per-prompt reward history jsonl with step, prompt_id, reward_mean (RUN/prompt_rewards.jsonl)
    id_column: str = ""  # limr: the column the history's prompt_id names; empty: the row's 0-based position in --data
    limr_threshold: float = ranged(0.6, le=1)  # limr: keep prompts scoring at least this (LIMR's 0.6)
    limr_bins: int = ranged(0, ge=0)  # limr: group steps into this many equal ranges (epochs); 0: each step is a point


@dataclass(frozen=True)
class TranscriptOptions:
    keep: Literal["success", "all"] = "success"  # keep episodes whose reward reaches success_reward, or every episode that did not fail
    success_reward: float = 1.0  # an episode with at least this reward is a success (the built-in games pay 1 for a win)
    max_turns: int = ranged(8, gt=0)  # model turns per episode (as rl.max_turns)
    max_new_tokens: int = ranged(256, gt=0)  # tokens per model turn (as rl.max_new_tokens)
    max_episode_tokens: int = ranged(1024, gt=0)  # tokens after the prompt per episode (as rl.max_episode_tokens)
    max_tool_output_tokens: int = ranged(256, gt=0)  # tokens of one env / tool message, cut beyond (as rl.max_tool_output_tokens)
    env_role: str = "user"  # chat role of env messages (as rl.env_role)
    timeout_s: float = ranged(10.0, ge=0)  # an env call slower than this fails the episode (left out)


@dataclass(frozen=True)
class DataToolsConfig:
    cmd: str = ""  # sub-command passrate|filter|dedup|decontaminate|select|transcripts (or the first word: posttrain data dedup ...)
    env: str = ""  # transcripts: the environment NAME[:k=v,...] played by its scripted player (demonstrate())
    rows: int = ranged(300, gt=0)  # transcripts: episodes played (env rows seeded from --seed)
    benchmark: tuple[str, ...] = ()  # decontaminate: eval benchmarks checked: gsm8k,math500,aime24,aime25,amc23,countdown,task:SPEC
    out: str = "runs/data"  # output folder: data.jsonl (kept rows), removed.jsonl, report.json, report.md
    overwrite: bool = False  # write into a non-empty --out (its earlier outputs are replaced)
    resume: bool = True  # passrate: continue a stopped run in --out (its recorded settings must match)
    seed: int = 0  # seeds the passrate samples and the MinHash permutations
    progress: bool = True  # show a progress bar on a terminal
    model: DataModel = field(default_factory=DataModel)
    data: DataIn = field(default_factory=DataIn)
    passrate: PassRateOptions = field(default_factory=PassRateOptions)
    filter: FilterOptions = field(default_factory=FilterOptions)
    dedup: DedupOptions = field(default_factory=DedupOptions)
    decontam: DecontamOptions = field(default_factory=DecontamOptions)
    select: SelectOptions = field(default_factory=SelectOptions)
    transcripts: TranscriptOptions = field(default_factory=TranscriptOptions)
