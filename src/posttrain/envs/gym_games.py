"""Two gymnasium toy-text games through the adapter (`posttrain.envs.gym.GymEnv`), registered as
``frozenlake`` and ``blackjack``. Offline and seeded (``reset(seed)`` seeds gymnasium's RNG).

- ``frozenlake`` (FrozenLake-v1, 4x4 map): walk from S to the goal G on frozen ice F without stepping
  into a hole H. The model sees the map as a grid with its position as ``P`` and replies with a move
  (left, down, right, up, or 0-3: gymnasium's action numbers). Reward 1 on reaching the goal.
  Options: ``is_slippery`` (0 by default, unlike gymnasium's True: on slippery ice a move goes
  sideways 2 times in 3, so the reward mostly measures luck), ``map_name`` (4x4 or 8x8), and
  ``random_map`` (1: every seed draws its own solvable map with gymnasium's ``generate_random_map``;
  0, the default: the fixed map, so every seed is the same game unless ``is_slippery``).
- ``blackjack`` (Blackjack-v1, Sutton & Barto's rules): "your sum, the dealer shows, usable ace";
  reply hit or stick (or 1 / 0, gymnasium's action numbers; "stand" and "stay" mean stick). Reward
  +1 win, -1 loss, 0 draw (``natural=1``: 1.5 for a natural blackjack). The last text shows the
  dealer's hand.

Both use the adapter's default for an unreadable action (``on_invalid=retry``: not played, told,
counted; ``on_invalid=default`` plays action 0 as LlamaGym's examples do). An unreadable reply scores
``invalid_reward``: 0 in ``frozenlake`` (no worse than a hole) but -1 in ``blackjack``, whose hands
lose on average: at 0, replying nothing playable would beat playing, and RL would learn to stall.
The texts are short on purpose: with a character tokenizer one env message is cut at
``max_tool_output_tokens`` (64). Each game has ``demonstrate()``, a scripted player for SFT
transcripts (`posttrain.envs.transcripts`): a shortest safe path in ``frozenlake``, hit below 17 in
``blackjack``.
"""
from __future__ import annotations

from posttrain.envs.base import register_env
from posttrain.envs.gym import GymEnv, gymnasium

MOVES = ("left", "down", "right", "up")  # gymnasium's FrozenLake action numbers 0..3
_DELTA = {0: (0, -1), 1: (1, 0), 2: (0, 1), 3: (-1, 0)}


def _flag(value, name: str) -> bool:
    """An option from a spec string (``is_slippery=1`` / ``true``) or Python, as a bool."""
    if isinstance(value, str):
        low = value.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off", ""):
            return False
        from posttrain.config import ConfigError

        raise ConfigError(f"option {name}={value!r}: expected 0/1 or true/false")
    return bool(value)


@register_env("frozenlake", "FrozenLake-v1 (gymnasium) as a text grid: reach the goal, avoid holes (reward 1)")
class FrozenLakeEnv(GymEnv):
    def __init__(self, is_slippery: bool = False, map_name: str = "4x4", random_map: bool = False,
                 on_invalid: str = "retry", invalid_reward: float = 0.0, max_invalid_actions: int = 0):
        self.is_slippery, self.random_map = _flag(is_slippery, "is_slippery"), _flag(random_map, "random_map")
        self.map_name = str(map_name)
        if self.map_name not in ("4x4", "8x8"):
            from posttrain.config import ConfigError

            raise ConfigError(f"frozenlake: map_name={map_name!r}; expected 4x4 or 8x8")
        intro = ("Frozen lake. Walk from S to the goal G over the ice F; a hole H ends the game. "
                 "P is you. Reply with one move: left, down, right or up.")
        super().__init__(self._make(None), action_names=MOVES, aliases={"west": 0, "south": 1, "east": 2, "north": 3},
                         intro=intro, on_invalid=on_invalid, invalid_reward=invalid_reward,
                         max_invalid_actions=max_invalid_actions)

    def _make(self, seed):
        gym = gymnasium()
        if self.random_map:
            from gymnasium.envs.toy_text.frozen_lake import generate_random_map

            desc = generate_random_map(size=int(self.map_name[0]), seed=seed)
            return gym.make("FrozenLake-v1", desc=desc, is_slippery=self.is_slippery)
        return gym.make("FrozenLake-v1", map_name=self.map_name, is_slippery=self.is_slippery)

    def reset(self, seed: int | None = None, options: dict | None = None):
        if self.random_map:  # a map of its own per seed
            self.env.close()
            self.env = self._make(seed)
        return super().reset(seed=seed, options=options)

    @property
    def grid(self) -> list[str]:
        rows = self.env.unwrapped.desc.tolist()  # gymnasium keeps the map as a numpy array of bytes
        return [b"".join(row).decode() if isinstance(row[0], bytes) else "".join(row) for row in rows]

    def position(self, state: int) -> tuple[int, int]:
        return divmod(int(state), len(self.grid[0]))

    def format_observation(self, observation) -> str:
        r, c = self.position(observation)
        rows = [row[:c] + "P" + row[c + 1:] if i == r else row for i, row in enumerate(self.grid)]
        return f"You are at row {r + 1}, column {c + 1}.\n" + "\n".join(rows)

    def describe_step(self, before, action, observation) -> str:
        (r, c), grid = self.position(before), self.grid
        dr, dc = _DELTA[int(action)]
        meant = (min(max(r + dr, 0), len(grid) - 1), min(max(c + dc, 0), len(grid[0]) - 1))
        now = self.position(observation)
        said = (f"You moved {MOVES[int(action)]}." if now == meant and now != (r, c) else
                "You hit the edge." if now == meant else "You slipped.")
        return f"{said} {self.format_observation(observation)}"

    def demonstrate(self) -> str:
        """A scripted move for SFT transcripts (`posttrain.envs.transcripts`): the first step of a
        shortest path to the goal that avoids holes (breadth-first, moves in action order)."""
        grid, start = self.grid, self.position(self.observation)
        first: dict[tuple[int, int], int | None] = {start: None}
        queue = [start]
        for r, c in queue:
            if grid[r][c] == "G":
                return MOVES[first[(r, c)] if first[(r, c)] is not None else 1]
            for a, (dr, dc) in _DELTA.items():
                nxt = (r + dr, c + dc)
                inside = 0 <= nxt[0] < len(grid) and 0 <= nxt[1] < len(grid[0])
                if inside and nxt not in first and grid[nxt[0]][nxt[1]] != "H":
                    first[nxt] = a if first[(r, c)] is None else first[(r, c)]
                    queue.append(nxt)
        return MOVES[1]  # no way to the goal (not on gymnasium's maps): any move

    def describe_end(self, observation, reward: float, terminated: bool) -> str:
        r, c = self.position(observation)
        if self.grid[r][c] == "G":
            return "You reached the goal!"
        if self.grid[r][c] == "H":
            return f"You fell into the hole at row {r + 1}, column {c + 1}."
        return "Out of moves."


@register_env("blackjack", "Blackjack-v1 (gymnasium): hit or stick against the dealer (reward +1 / 0 / -1)")
class BlackjackEnv(GymEnv):
    def __init__(self, natural: bool = False, on_invalid: str = "retry", invalid_reward: float = -1.0,
                 max_invalid_actions: int = 0):
        gym = gymnasium()
        self.natural = _flag(natural, "natural")
        system = ("You are playing blackjack against a dealer. Get closer to 21 than the dealer without going "
                  "over. Reply hit to take a card or stick to stop.")
        super().__init__(gym.make("Blackjack-v1", natural=self.natural, sab=not self.natural), action_names=("stick", "hit"),
                         aliases={"stand": 0, "stay": 0}, system_prompt=system, on_invalid=on_invalid,
                         invalid_reward=invalid_reward, max_invalid_actions=max_invalid_actions)

    def format_observation(self, observation) -> str:
        total, dealer, ace = (int(x) for x in observation)
        shows = "an ace" if dealer == 1 else str(dealer)
        has = "you have a usable ace" if ace else "no usable ace"
        return f"Your sum is {total}, the dealer shows {shows}, {has}. Hit or stick?"

    def demonstrate(self) -> str:
        """A scripted move for SFT transcripts: hit below 17 (below 18 with a usable ace), else stick
        (the dealer's own rule, a simplification of basic strategy)."""
        total, _, ace = (int(x) for x in self.observation)
        return "hit" if total < (18 if ace else 17) else "stick"

    def describe_end(self, observation, reward: float, terminated: bool) -> str:
        from gymnasium.envs.toy_text.blackjack import sum_hand

        game = self.env.unwrapped
        total, dealer = int(observation[0]), sum_hand(game.dealer)
        verdict = "You win" if reward > 0 else "You lose" if reward < 0 else "A draw"
        bust = " (bust)" if total > 21 else ""
        cards = " ".join(map(str, game.dealer))
        return f"Your sum is {total}{bust}; the dealer has {dealer} ({cards}). {verdict}: {reward:+g}."
