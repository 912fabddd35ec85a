"""Where a training run's time goes: wall seconds per stage (load, forward, backward, optimizer,
validation, samples, checkpoints, logging), reported at the end of ``selfie train`` and in the run's
``metrics.jsonl`` so that a slow run can be compared with ``benchmarks/bench_smollm2_train_step.py``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

STEP_STAGES = ("forward", "backward", "optimizer")  # the parts of one optimizer step


class StageTimes:
    """Accumulated wall seconds per named stage.

    >>> times = StageTimes()
    >>> with times("forward"):
    ...     loss = model(batch)
    >>> times.seconds["forward"]
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.steps = 0  # optimizer steps timed (the caller counts them)

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                torch.cuda.synchronize()  # GPU work belongs to the stage that queued it
            self.add(stage, time.perf_counter() - t0)

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    @property
    def step_seconds(self) -> float:
        """Seconds in the optimizer steps themselves (forward, backward, optimizer)."""
        return sum(self.seconds.get(k, 0.0) for k in STEP_STAGES)

    def rates(self) -> tuple[float, float]:
        """Steps/s over the steps alone and over the whole run after loading (0.0 before any step)."""
        total = sum(v for k, v in self.seconds.items() if k != "load")
        if not (self.steps and self.step_seconds):
            return 0.0, 0.0
        return self.steps / self.step_seconds, self.steps / total

    def summary(self) -> str:
        """One line: seconds per stage, the step stages' share, and steps/s of the steps alone and overall.

        >>> times.summary()
        'load 9.1 s · steps 820.4 s (forward 41%, backward 58%, optimizer 1%) · validation 30.2 s · ...'
        """
        s, step = self.seconds, self.step_seconds
        parts = [f"load {s['load']:.1f} s"] if "load" in s else []
        if step:
            shares = ", ".join(f"{k} {100 * s.get(k, 0.0) / step:.0f}%" for k in STEP_STAGES)
            parts.append(f"steps {step:.1f} s ({shares})")
        parts += [f"{k} {v:.1f} s" for k, v in s.items() if k != "load" and k not in STEP_STAGES]
        if self.steps and step:
            in_steps, overall = self.rates()
            parts.append(f"{in_steps:.3f} steps/s in the steps, {overall:.3f} overall")
        return " · ".join(parts)
