"""A step-latency model: what a batch of size n on a pipeline costs, learned online.

Each (pipeline, batch size) keeps an exponentially weighted mean; a size never seen is estimated
from the nearest measured sizes by linear interpolation (batched forwards grow roughly affinely).
The SLO-aware scheduler uses it to pick batch sizes that meet deadlines; EDF uses it for admission.
"""

from __future__ import annotations


class LatencyModel:
    def __init__(self, alpha: float = 0.2) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self._mean: dict[str, dict[int, float]] = {}

    def observe(self, pipeline: str, batch_size: int, seconds: float) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds}")
        table = self._mean.setdefault(pipeline, {})
        old = table.get(batch_size)
        table[batch_size] = seconds if old is None else old + self.alpha * (seconds - old)

    def scale(self, pipeline: str, batch_size: int, ratio: float, seconds: float) -> None:
        """Multiply the mean for a batch size by ``ratio`` (a geometric step towards a measurement);
        a size not measured yet starts at ``seconds``."""
        if batch_size < 1 or ratio <= 0 or seconds < 0:
            raise ValueError(f"need batch_size >= 1, ratio > 0 and seconds >= 0, got {batch_size}, {ratio}, {seconds}")
        table = self._mean.setdefault(pipeline, {})
        old = table.get(batch_size)
        table[batch_size] = seconds if old is None else old * ratio

    def reset(self, pipeline: str, batch_size: int, seconds: float) -> None:
        """Set the mean for a batch size outright (a warm-up profile), forgetting earlier samples."""
        if batch_size < 1 or seconds < 0:
            raise ValueError(f"need batch_size >= 1 and seconds >= 0, got {batch_size} and {seconds}")
        self._mean.setdefault(pipeline, {})[batch_size] = seconds

    def predict(self, pipeline: str, batch_size: int) -> float | None:
        """Estimated seconds for a batch, or None before anything was measured for `pipeline`."""
        table = self._mean.get(pipeline)
        if not table:
            return None
        if batch_size in table:
            return table[batch_size]
        sizes = sorted(table)
        lower = [s for s in sizes if s < batch_size]
        upper = [s for s in sizes if s > batch_size]
        if lower and upper:
            a, b = lower[-1], upper[0]
            w = (batch_size - a) / (b - a)
            return table[a] + w * (table[b] - table[a])
        if len(sizes) >= 2:  # extrapolate from the two nearest
            a, b = (sizes[-2], sizes[-1]) if lower else (sizes[0], sizes[1])
            slope = (table[b] - table[a]) / (b - a)
            return max(0.0, table[a] + slope * (batch_size - a))
        (only,) = sizes
        return table[only] * batch_size / only  # one point: assume linear in size

    def sizes(self, pipeline: str) -> list[int]:
        """The batch sizes measured for `pipeline`, ascending."""
        return sorted(self._mean.get(pipeline, ()))

    def snapshot(self) -> dict[str, dict[int, float]]:
        return {p: dict(t) for p, t in self._mean.items()}
