"""Seeded, reproducible workloads, generated locally (no dataset downloads).

A workload is a list of sessions; a session is a list of requests sent one after another (turn
t+1 only after turn t has finished). Prompts are token ids, so lengths are exact and the same
for every model with a vocabulary of at least ``vocab_size``.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

MIN_TOKEN = 100  # keep clear of special tokens at the start of most vocabularies


@dataclass
class BenchRequest:
    prompt: list[int]
    max_tokens: int
    session: int = 0
    turn: int = 0
    prefix_group: int | None = None
    at_s: float | None = None  # trace replay: fixed arrival time


@dataclass
class Workload:
    name: str
    sessions: list[list[BenchRequest]]
    params: dict = field(default_factory=dict)

    @property
    def num_requests(self) -> int:
        return sum(len(s) for s in self.sessions)


def _tokens(rng: random.Random, n: int, vocab: int) -> list[int]:
    return [rng.randrange(MIN_TOKEN, vocab) for _ in range(n)]


def _length(rng: random.Random, mean: int, spread: float) -> int:
    """Uniform within mean * (1 +- spread), at least 1."""
    return max(1, round(mean * rng.uniform(1 - spread, 1 + spread)))


def random_lengths(num: int, input_mean: int = 256, output_mean: int = 64, spread: float = 0.5,
                   vocab: int = 32000, seed: int = 0) -> Workload:
    rng = random.Random(seed)
    sessions = [[BenchRequest(_tokens(rng, _length(rng, input_mean, spread), vocab),
                              _length(rng, output_mean, spread), session=i)] for i in range(num)]
    return Workload("random", sessions, dict(input_mean=input_mean, output_mean=output_mean,
                                             spread=spread, seed=seed))


def shared_prefix(num_groups: int = 4, users_per_group: int = 6, turns: int = 3,
                  system_tokens: int = 512, user_tokens: int = 64, output_tokens: int = 32,
                  vocab: int = 32000, seed: int = 0) -> Workload:
    """G system prompts shared by many users; each user holds a multi-turn conversation whose
    history (system + earlier turns + replies) grows turn by turn."""
    rng = random.Random(seed)
    systems = [_tokens(rng, system_tokens, vocab) for _ in range(num_groups)]
    sessions = []
    for user in range(num_groups * users_per_group):
        group = user % num_groups
        history = list(systems[group])
        session = []
        for turn in range(turns):
            history += _tokens(rng, _length(rng, user_tokens, 0.25), vocab)
            session.append(BenchRequest(list(history), output_tokens, session=user, turn=turn,
                                        prefix_group=group))
            # The next turn carries a reply of the requested length (synthetic but fixed, so
            # the workload is the same for every system under test).
            history += _tokens(rng, output_tokens, vocab)
        sessions.append(session)
    rng.shuffle(sessions)
    return Workload("shared-prefix", sessions, dict(
        num_groups=num_groups, users_per_group=users_per_group, turns=turns,
        system_tokens=system_tokens, user_tokens=user_tokens, output_tokens=output_tokens,
        seed=seed))


def long_short_mix(num: int, long_fraction: float = 0.3, long_input: int = 1536,
                   long_output: int = 8, short_input: int = 64, short_output: int = 128,
                   vocab: int = 32000, seed: int = 0) -> Workload:
    """Long-prompt/short-answer mixed with short-prompt/long-answer: long prefills stall the
    decodes they share a batch with, which is what hurts colocated serving."""
    rng = random.Random(seed)
    sessions = []
    for i in range(num):
        if rng.random() < long_fraction:
            req = BenchRequest(_tokens(rng, _length(rng, long_input, 0.2), vocab),
                               _length(rng, long_output, 0.25), session=i)
        else:
            req = BenchRequest(_tokens(rng, _length(rng, short_input, 0.2), vocab),
                               _length(rng, short_output, 0.2), session=i)
        sessions.append([req])
    return Workload("long-short", sessions, dict(
        long_fraction=long_fraction, long_input=long_input, long_output=long_output,
        short_input=short_input, short_output=short_output, seed=seed))


def trace(path: Path, vocab: int = 32000, seed: int = 0, prefix_tokens: int = 256) -> Workload:
    """Replay a JSONL trace: one object per line with ``timestamp`` (s), ``input_length``,
    ``output_length`` and optionally ``prefix_group`` (requests of a group share their first
    ``prefix_tokens`` tokens)."""
    rng = random.Random(seed)
    prefixes: dict[int, list[int]] = {}
    sessions = []
    for n, line in enumerate(Path(path).read_text().splitlines()):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            at, n_in, n_out = float(row["timestamp"]), int(row["input_length"]), \
                int(row["output_length"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}:{n + 1}: expected timestamp, input_length, "
                             f"output_length ({e})") from None
        group = row.get("prefix_group")
        prompt = []
        if group is not None:
            prefix = prefixes.setdefault(group, _tokens(rng, prefix_tokens, vocab))
            prompt = prefix[: min(prefix_tokens, n_in)]
        prompt += _tokens(rng, n_in - len(prompt), vocab)
        sessions.append([BenchRequest(prompt, n_out, session=n, prefix_group=group, at_s=at)])
    return Workload("trace", sessions, dict(path=str(path), seed=seed))
