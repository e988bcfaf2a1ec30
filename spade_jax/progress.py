"""Steps/s, images/s and ETA lines for any long loop (training, evaluation), kept apart from both so that neither
imports the other for it."""
from __future__ import annotations

import math
import time

from absl import logging

__all__ = ["Progress"]


def _fmt_duration(s: float) -> str:
  s = int(round(s))
  d, s = divmod(s, 86400)
  h, s = divmod(s, 3600)
  m, s = divmod(s, 60)
  if d:
    return f"{d}d{h:02d}h"
  if h:
    return f"{h}h{m:02d}m"
  return f"{m}m{s:02d}s" if m else f"{s}s"


class Progress:
  """Steps/s, images/s and ETA, logged at most every `every_secs`.

  The first `update` only starts the clock: that step includes XLA compilation, which would wreck the ETA. After
  that the rate is an exponential moving average over time (time constant `smoothing_secs`), so it follows real
  changes (e.g. eval pauses) without jumping on every step. Host time is measured, so with async dispatch the rate
  is only meaningful over many steps (it converges once the dispatch queue is full).
  """

  def __init__(self, total_steps: int, *, start_step: int = 0, every_secs: float = 60.0,
               smoothing_secs: float = 60.0, clock=time.monotonic, log=None):
    self.total_steps = int(total_steps)
    self._log = log or (lambda text: logging.info("%s", text))  # where the lines go (default: absl INFO)
    self.every_secs = every_secs
    self.smoothing_secs = smoothing_secs
    self._clock = clock
    self._last = None            # (step, time) of the previous update
    self._last_log = None
    self.step = int(start_step)
    self.rate = None             # steps/s, None until two updates were seen
    self.images_per_step = None

  @property
  def eta_seconds(self) -> float | None:
    if not self.rate:
      return None
    return max(self.total_steps - self.step, 0) / self.rate

  def line(self) -> str:
    pct = 100.0 * self.step / max(self.total_steps, 1)
    parts = [f"step {self.step}/{self.total_steps} ({pct:.1f}%)"]
    if self.rate is None:
      parts.append("measuring speed")
    else:
      parts.append(f"{self.rate:.1f} steps/s")
      if self.images_per_step:
        parts.append(f"{self.rate * self.images_per_step:.1f} img/s")
      parts.append(f"ETA {_fmt_duration(self.eta_seconds)}")
    return " | ".join(parts)

  def update(self, step: int, images_per_step: int | None = None) -> str | None:
    """Record that `step` is done; returns the line when it was logged, else None."""
    now = self._clock()
    step = int(step)
    if images_per_step is not None:
      self.images_per_step = images_per_step
    if self._last is not None and step > self._last[0] and now > self._last[1]:
      dt = now - self._last[1]
      inst = (step - self._last[0]) / dt
      if self.rate is None:
        self.rate = inst
      else:
        w = math.exp(-dt / self.smoothing_secs)
        self.rate = w * self.rate + (1 - w) * inst
    self._last = (step, now)
    self.step = step
    due = self._last_log is None or now - self._last_log >= self.every_secs or step >= self.total_steps
    if self.rate is None or not due:
      return None
    self._last_log = now
    text = self.line()
    self._log(text)
    return text
