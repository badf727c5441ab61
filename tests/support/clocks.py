"""A clock that moves by set amounts, for the benchmark's arithmetic."""


class Clock:
  """time.perf_counter / process_time giving these readings in turn."""

  def __init__(self, *readings):
    self.readings = list(readings)

  def __call__(self):
    return self.readings.pop(0)
