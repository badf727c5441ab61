"""Comparing the scores and lwlrap main.py reports with independent ones:
bounds over the orders of near-tied scores, and the printed figures."""

import re

from conftest import independent_lwlrap


# Scores from the engine (batch norm folded) and from the plain model differ
# by float32 rounding, well below this; score pairs closer than this may
# rank either way, so metrics are checked against bounds over both orders.
TIE = 2e-5
# Reports print 6 decimals.
PRINTED = 6e-7


def lwlrap_bounds(truth, scores, delta=TIE):
  """Raising every positive's score can only raise lwlrap; lowering it can
  only lower it: (low, high) over every order of near-tied pairs."""
  return (independent_lwlrap(truth, scores - delta * truth),
          independent_lwlrap(truth, scores + delta * truth))


def within(value, bounds, slack=PRINTED + 1e-9):
  low, high = bounds
  return low - slack <= value <= high + slack


def overall_lwlrap(text):
  values = re.findall(r'^Overall lwlrap = ([0-9.]+)$', text, re.M)
  assert len(values) == 1, text
  return float(values[0])
