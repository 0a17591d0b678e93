"""LlamaGym's Blackjack example, on posttrain: a chat model plays gymnasium's Blackjack-v1 and learns
from the game's reward with GRPO.

    python examples/gym_blackjack.py                      # a tiny from-config model, 20 steps, CPU
    python examples/gym_blackjack.py --model path/to/SmolLM2-135M-Instruct --steps 200   # any model posttrain loads
    python examples/gym_blackjack.py --env blackjack      # the built-in wrapper (posttrain.envs.gym_games)

LlamaGym (github.com/KhoomeiK/LlamaGym) subclasses an ``Agent`` with a system prompt,
``format_observation`` and ``extract_action``, and trains it with TRL's PPO on the re-rendered chat.
Here the same three pieces wrap the environment (`posttrain.envs.gym.GymEnv`), the wrapper is
registered by name, and `posttrain.RLTrainer` runs the multi-turn episodes token in / token out.
One departure is kept from the adapter: a reply with no readable action is not played as action 0
(LlamaGym's fallback) but told to the model and counted (``invalid_actions``).
Needs gymnasium: ``pip install 'posttrain[agents]'``.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import posttrain
from posttrain.envs import ENVS, register_env
from posttrain.envs.gym import GymEnv

SYSTEM = ("You are an expert blackjack player. Every turn, you'll see your current sum, the dealer's showing card "
          "value, and whether you have a usable ace. Win by exceeding the dealer's hand but not exceeding 21. "
          'Decide whether to stay with your current sum by writing "Action: 0" or accept another card by writing '
          '"Action: 1". Accept a card unless very close to 21.')  # LlamaGym's prompt


def format_observation(obs) -> str:  # LlamaGym's formatter
    return f"You: {obs[0]}. Dealer: {obs[1]}. You have {'an' if obs[2] else 'no'} ace."


def extract_action(text: str):  # LlamaGym's parser, returning None instead of a default action
    m = re.search(r"Action: (\d)", text)
    if m and m.group(1) in "01":
        return int(m.group(1))
    digits = [ch for ch in text if ch.isdigit()]
    if digits and digits[-1] in "01":
        return int(digits[-1])
    low = text.lower()
    return 0 if "stick" in low else 1 if "hit" in low else None


if "llamagym-blackjack" not in ENVS:
    @register_env("llamagym-blackjack", "Blackjack-v1 with LlamaGym's prompt, formatter and parser")
    class LlamaGymBlackjack(GymEnv):
        def __init__(self):
            # an unreadable reply costs a lost hand: at 0 it would beat playing (hands lose on average)
            super().__init__("Blackjack-v1", format_observation, extract_action, system_prompt=SYSTEM, invalid_reward=-1.0)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tiny-llama:d=32,l=2,h=2")
    p.add_argument("--env", default="llamagym-blackjack", help="a registered env: llamagym-blackjack, blackjack, frozenlake")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--games-per-step", type=int, default=8, help="env seeds per step (prompts_per_step)")
    p.add_argument("--samples", type=int, default=4, help="episodes per seed (the GRPO group)")
    p.add_argument("--max-new-tokens", type=int, default=12)
    p.add_argument("--max-turns", type=int, default=4)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seeds", type=int, default=256, help="training seeds (data.train_rows)")
    p.add_argument("--out", default="runs/gym-blackjack")
    a = p.parse_args(argv)
    cfg = posttrain.RLConfig(
        algo="grpo",
        model=posttrain.ModelConfig(name=a.model),
        data=posttrain.DataConfig(train_rows=a.seeds, eval_rows=0),
        optim=posttrain.OptimConfig(lr=a.lr),
        train=posttrain.TrainConfig(out=a.out, max_steps=a.steps, progress=False, eval_every=-1),
        rl=posttrain.RLOptions(env=a.env, prompts_per_step=a.games_per_step, samples_per_prompt=a.samples,
                               max_new_tokens=a.max_new_tokens, max_turns=a.max_turns, show_every=0),
    )
    result = posttrain.RLTrainer(cfg).train()
    for m in map(json.loads, (Path(a.out) / "metrics.jsonl").read_text().splitlines()):
        if "env/reward_mean" in m:
            print(f"step {m['step']}: mean episode reward {m['env/reward_mean']:+.3f}, turns {m['env/turns_mean']:.2f}")
    print(f"final mean episode reward {result['env/reward_mean']:+.3f}, saved {result['checkpoint']}")
    return result


if __name__ == "__main__":
    main()
