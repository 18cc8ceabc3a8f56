"""Which DiT blocks each pipeline stage runs, and when to move one (measured balance, hysteresis).

Stages hold contiguous block ranges, stage 0 first: ``[range(0, 15), range(15, 30)]`` for 30 blocks on
2 devices. The :class:`Balancer` watches each stage's compute seconds per forward; when the slowest
stage stays slower than the fastest by more than ``threshold`` for ``patience`` forwards in a row,
and moving one boundary block to its faster neighbour is predicted to lower the slowest stage's time,
it proposes that move. After a move the measurements restart and ``cooldown`` forwards pass before
the next proposal, so a noisy stage never makes blocks bounce back and forth.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence


def split_layers(num_layers: int, stages: int) -> list[range]:
    """Contiguous ranges, as even as possible (the first stages get the remainder)."""
    if not 1 <= stages <= num_layers:
        raise ValueError(f"stages must be in [1, {num_layers}] (one block at least per stage), got {stages}")
    return even_ranges(num_layers, stages)


def even_ranges(n: int, parts: int) -> list[range]:
    """``range(n)`` cut into ``parts`` (1..n) contiguous runs, as even as possible, the first ones longer."""
    base, extra = divmod(n, parts)
    out, start = [], 0
    for p in range(parts):
        size = base + (1 if p < extra else 0)
        out.append(range(start, start + size))
        start += size
    return out


def check_ranges(ranges: Sequence[range], num_layers: int) -> None:
    """ValueError unless ``ranges`` tile ``0..num_layers-1`` in order, each non-empty."""
    start = 0
    for s, r in enumerate(ranges):
        if r.step != 1 or r.start != start or len(r) < 1:
            raise ValueError(f"stage {s} range {r} does not continue at block {start} (ranges {list(ranges)})")
        start = r.stop
    if start != num_layers:
        raise ValueError(f"ranges {list(ranges)} cover {start} of {num_layers} blocks")


@dataclasses.dataclass(frozen=True)
class Move:
    """Move block ``layer`` from stage ``src`` to its neighbour ``dst``."""

    layer: int
    src: int
    dst: int


def apply_move(ranges: Sequence[range], move: Move) -> list[range]:
    """The ranges after ``move`` (a boundary block to a neighbouring stage)."""
    out = list(ranges)
    src, dst = out[move.src], out[move.dst]
    if abs(move.src - move.dst) != 1:
        raise ValueError(f"blocks move between neighbouring stages only, got {move}")
    if len(src) < 2:
        raise ValueError(f"stage {move.src} holds one block; it cannot give one away")
    if move.dst == move.src + 1 and move.layer == src.stop - 1:
        out[move.src], out[move.dst] = range(src.start, src.stop - 1), range(move.layer, dst.stop)
    elif move.dst == move.src - 1 and move.layer == src.start:
        out[move.src], out[move.dst] = range(src.start + 1, src.stop), range(dst.start, move.layer + 1)
    else:
        raise ValueError(f"block {move.layer} is not on the boundary of stage {move.src} ({src}) toward {move.dst}")
    return out


@dataclasses.dataclass
class BalancerConfig:
    threshold: float = 0.25  # slowest / fastest - 1 that counts as unbalanced
    patience: int = 8  # unbalanced forwards in a row before a move
    cooldown: int = 16  # forwards after a move before the next proposal
    smoothing: float = 0.3  # EMA weight of a new measurement

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 10.0:
            raise ValueError(f"threshold must be in (0, 10], got {self.threshold}")
        if not 1 <= self.patience <= 10_000 or not 0 <= self.cooldown <= 100_000:
            raise ValueError(f"patience must be >= 1 and cooldown >= 0, got {self.patience}, {self.cooldown}")
        if not 0.0 < self.smoothing <= 1.0:
            raise ValueError(f"smoothing must be in (0, 1], got {self.smoothing}")


class Balancer:
    """Proposes block moves from measured per-stage compute times (see the module doc)."""

    def __init__(self, config: BalancerConfig | None = None) -> None:
        self.config = config or BalancerConfig()
        self.ema: list[float] | None = None
        self._streak = 0
        self._cooldown = 0
        self.moves = 0

    def observe(self, seconds: Sequence[float], ranges: Sequence[range]) -> Move | None:
        """Record one forward's compute seconds per stage; returns a move to make now, or None."""
        if len(seconds) != len(ranges):
            raise ValueError(f"{len(seconds)} stage times for {len(ranges)} stages")
        a = self.config.smoothing
        self.ema = list(seconds) if self.ema is None else [
            (1 - a) * e + a * s for e, s in zip(self.ema, seconds, strict=True)]
        if self._cooldown > 0:
            self._cooldown -= 1
            return None
        if len(ranges) < 2:
            return None
        slow = max(range(len(ranges)), key=lambda s: self.ema[s])  # type: ignore[index]
        fast = min(self.ema)
        if fast <= 0 or self.ema[slow] / fast - 1 <= self.config.threshold:
            self._streak = 0
            return None
        self._streak += 1
        if self._streak < self.config.patience:
            return None
        move = self._best_move(slow, ranges)
        if move is not None:
            self.reset_after_move()
        return move

    def _best_move(self, slow: int, ranges: Sequence[range]) -> Move | None:
        assert self.ema is not None
        if len(ranges[slow]) < 2:
            return None
        per_block = self.ema[slow] / len(ranges[slow])
        best: tuple[float, Move] | None = None
        for nb in (slow - 1, slow + 1):
            if not 0 <= nb < len(ranges):
                continue
            layer = ranges[slow].start if nb < slow else ranges[slow].stop - 1
            after = max(self.ema[slow] - per_block, self.ema[nb] + per_block)
            if after < self.ema[slow] and (best is None or after < best[0]):
                best = (after, Move(layer, slow, nb))
        return None if best is None else best[1]

    def reset_after_move(self) -> None:
        self.ema = None
        self._streak = 0
        self._cooldown = self.config.cooldown
        self.moves += 1
