"""study.py's plots: what each draws, its legend, styles and intervals,
the spec's extra plots, and the backend."""

import itertools
import os
import signal
import struct
import subprocess
import sys

import pytest

from support.settings import REPO
from support.study_fakes import FakeMain, write_spec
from tools import study
from tools.studylib import report
from tools.studylib import stats


# --- Plot -------------------------------------------------------------------

def test_plot_is_a_png(tmp_path, monkeypatch):
  """800 x 500 pixels whatever dots per inch a user's matplotlibrc sets."""
  import matplotlib
  monkeypatch.setitem(matplotlib.rcParams, 'figure.dpi', 72)
  rows = stats.summarize(
      [(c, seed, step, 0.3 + 0.001 * step + 0.02 * seed + (c == 'lr') * 0.05)
       for c in ('base', 'lr') for seed in (1, 2, 3)
       for step in (0, 100, 200)] + [('one', 1, 200, 0.5)], 'base')
  path = str(tmp_path / 'lwlrap.png')
  report.plot(rows, 'base', path)
  with open(path, 'rb') as f:
    head = f.read(24)
  assert head[:8] == b'\x89PNG\r\n\x1a\n' and head[12:16] == b'IHDR'
  assert struct.unpack('>II', head[16:24]) == (800, 500)
  assert 10_000 < os.path.getsize(path) < 500_000
  assert not [n for n in os.listdir(tmp_path) if n != 'lwlrap.png']


def test_plot_draws_each_configuration_the_reference_last(tmp_path,
                                                          monkeypatch):
  """Each configuration once, with its own rows; the reference last, so
  that it is drawn over the others, whatever its place in the rows."""
  rows = stats.summarize(
      [(c, seed, step, 0.3 + 0.001 * step + 0.01 * seed)
       for c in ('base', 'lr', 'wide') for seed in (1, 2)
       for step in (100, 200)], 'base')
  drawn = []
  real = report._plot_config

  def spy(ax, mine, config, is_reference, colors):
    drawn.append((config, is_reference, sorted({r['config'] for r in mine})))
    return real(ax, mine, config, is_reference, colors)

  monkeypatch.setattr(report, '_plot_config', spy)
  import matplotlib.axes
  grids = []
  monkeypatch.setattr(matplotlib.axes.Axes, 'grid',
                      lambda self, *args, **kwargs: grids.append(kwargs))
  report.plot(rows, 'base', str(tmp_path / 'lwlrap.png'))
  assert drawn == [('lr', False, ['lr']), ('wide', False, ['wide']),
                   ('base', True, ['base'])]
  # A light grid (matplotlib's own calls set no alpha).
  assert [g for g in grids if 'alpha' in g] == [{'alpha': 0.3}]


@pytest.mark.parametrize('reference, first', [('base', 'base (reference)'),
                                              ('reference', 'reference')])
def test_the_legend_lists_the_reference_first(tmp_path, monkeypatch,
                                              reference, first):
  """The reference heads the legend, however the rows order it, and a
  reference named `reference` is not called so twice; a configuration
  scored at one step (an error bar, which matplotlib's own legend order
  puts after the lines) keeps its place."""
  rows = stats.summarize(
      [(c, seed, step, 0.3 + 0.001 * step + 0.01 * seed)
       for c in ('lr', 'one', reference, 'wide') for seed in (1, 2)
       for step in (100, 200) if c != 'one' or step == 200], reference)
  import matplotlib.axes
  legends = []
  monkeypatch.setattr(matplotlib.axes.Axes, 'legend',
                      lambda self, handles, labels, **kw: legends.append(
                          (labels, [h.get_label() for h in handles],
                           # An error bar's colour is its data line's.
                           [getattr(h, 'lines', [h])[0].get_color()
                            for h in handles])))
  report.plot(rows, reference, str(tmp_path / 'lwlrap.png'))
  ((labels, own_labels, colors),) = legends
  assert labels == own_labels == [first, 'lr', 'one', 'wide']
  assert colors[0] == 'black' and 'black' not in colors[1:]


def test_more_configurations_than_colours_get_lines_of_their_own(
    tmp_path, monkeypatch):
  """Past the palette's 10 colours the lines turn dashed, then dotted:
  23 configurations and the reference give 24 lines, no two alike, and
  the study goes on instead of running out of colours."""
  names = ['c%02d' % i for i in range(23)]
  rows = stats.summarize(
      [(c, seed, step, 0.3 + 0.001 * step + 0.01 * seed)
       for c in ['base'] + names for seed in (1, 2)
       for step in (100, 200)], 'base')
  import matplotlib.axes
  legends = []
  monkeypatch.setattr(matplotlib.axes.Axes, 'legend',
                      lambda self, handles, labels, **kw: legends.append(
                          [(h.get_label(), h.get_color(), h.get_linestyle())
                           for h in handles]))
  report.plot(rows, 'base', str(tmp_path / 'lwlrap.png'))
  ((lines,),) = [legends]
  assert [label for label, _, _ in lines] == ['base (reference)'] + names
  styles = [(color, dashes) for _, color, dashes in lines]
  assert len(set(styles)) == 24
  import matplotlib.pyplot as plt
  palette = plt.rcParams['axes.prop_cycle'].by_key()['color']
  assert styles[1:] == ([(c, '-') for c in palette] +
                        [(c, '--') for c in palette] +
                        [(c, ':') for c in palette[:3]])


def test_an_empty_palette_still_gives_lines():
  """A style sheet without colours must not hang the plot: the lines fall
  back to the first default colour and still differ by their dashes."""
  def first(colors, n):
    def hung(*_):
      raise TimeoutError('_line_styles yielded nothing for 10 s')
    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(10)  # a generator that never yields fails, not hangs
    try:
      return list(itertools.islice(report._line_styles(colors), n))
    finally:
      signal.alarm(0)
      signal.signal(signal.SIGALRM, previous)
  assert first([], 5) == [
      ('C0', '-'), ('C0', '--'), ('C0', ':'), ('C0', '-.'), ('C0', '-')]
  # An iterator is read once and kept for every line style.
  assert first(iter(['red', 'blue']), 3) == [
      ('red', '-'), ('blue', '-'), ('red', '--')]


def test_the_specs_plots_draw_their_configurations_beside_the_reference(
    tmp_path, monkeypatch):
  """lwlrap.png draws every configuration; each of the spec's plots its own
  ones and the reference, with the same rows, and none for a plot with no
  results yet."""
  spec = write_spec(tmp_path, {'base': {'max_steps': 200},
                          'fast': {'max_steps': 100},
                          'wide': {'max_steps': 100},
                          'late': {'max_steps': 100}}, seeds=(1, 2, 3),
               plots={'quick': ['fast'], 'both': ['wide', 'fast'],
                      'later': ['late']})
  out = str(tmp_path / 'out')
  study.run_study(spec, out, only=('base', 'fast', 'wide'), runner=FakeMain(),
                  say=lambda line: None)
  drawn = {}
  monkeypatch.setattr(report, 'plot', lambda rows, reference, path: drawn.update(
      {os.path.basename(path): (reference, rows)}))
  assert report.write_summary(spec, out) == 3 * (3 + 2 + 2)
  every = stats.summarize(stats.collect(spec, out, *spec.datasets), 'base')
  assert drawn['lwlrap.png'] == ('base', every)
  assert drawn['lwlrap-quick.png'] == (
      'base', [r for r in every if r['config'] in ('base', 'fast')])
  assert drawn['lwlrap-both.png'] == (
      'base', [r for r in every if r['config'] != 'late'])
  assert sorted(drawn) == ['lwlrap-both.png', 'lwlrap-quick.png',
                           'lwlrap.png']

def test_plot_is_drawn_whatever_backend_the_environment_names(tmp_path):
  """study.py draws with Agg, whatever MPLBACKEND says: here the
  third-party mplcairo backend, as a user's shell may export it, which this
  environment does not have."""
  script = ('import sys; sys.path.insert(0, %r); '
            'from tools.studylib import report, stats; '
            'report.plot(stats.summarize([("a", 1, 100, 0.5), ("a", 2, 100, '
            '0.6)], "a"), "a", %r)' % (REPO, str(tmp_path / 'p.png')))
  env = dict(os.environ,
             MPLBACKEND='module://mplcairo.base')
  result = subprocess.run([sys.executable, '-c', script], env=env,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert (tmp_path / 'p.png').read_bytes()[:4] == b'\x89PNG'

class Axes:
  """What _plot_config draws, by method."""

  def __init__(self):
    self.calls = []

  def __getattr__(self, name):
    def call(*args, **kwargs):
      self.calls.append((name, args, kwargs))
      return [name]  # as Axes.plot, a list of what it drew
    return call


def test_each_configuration_is_drawn_with_its_interval():
  """Several steps: the line of means and the interval as a band; one
  step: a point with the interval as error bars (below, above the mean)."""
  rows = [{'step': 100, 'mean': 0.5, 'low': 0.4, 'high': 0.7},
          {'step': 200, 'mean': 0.6, 'low': None, 'high': None}]
  ax = Axes()
  report._plot_config(ax, rows, 'wide', False, iter([('red', '--')]))
  (plot, args, kwargs), (band, band_args, band_kwargs) = ax.calls
  assert (plot, args, kwargs['label'], kwargs['color'],
          kwargs['linestyle']) == (
      'plot', ([100, 200], [0.5, 0.6]), 'wide', 'red', '--')
  plot_kwargs = kwargs
  assert (band, band_args, band_kwargs['color']) == (
      'fill_between', ([100, 200], [0.4, 0.6], [0.7, 0.6]), 'red')
  ax = Axes()
  report._plot_config(ax, rows[:1], 'base', True, iter([]))
  ((name, args, kwargs),) = ax.calls
  assert (name, args, kwargs['label'], kwargs['color']) == (
      'errorbar', ([100], [0.5]), 'base (reference)', 'black')
  assert [e[0] for e in kwargs['yerr']] == pytest.approx([0.1, 0.2])
  # The reference stands out: a thicker line than any other's.
  assert kwargs['linewidth'] > plot_kwargs['linewidth']
  # Its band is lighter than the others', so that theirs show through it,
  # and no band has an outline that would read as a line of its own.
  ax = Axes()
  report._plot_config(ax, rows, 'base', True, iter([]))
  reference_band = ax.calls[1][2]
  assert reference_band['alpha'] < band_kwargs['alpha']
  assert reference_band['linewidth'] == band_kwargs['linewidth'] == 0


def test_a_panel_per_dataset(tmp_path, monkeypatch):
  """Rows of two datasets: a 1600 x 500 image of two panels, each drawing
  its dataset's rows and named after it; the reference last in each."""
  rows = [dict(r, dataset=name) for name, offset in (('drums', 0.3),
                                                      ('instruments', 0.1))
          for r in stats.summarize(
              [(c, seed, step, offset + 0.001 * step + 0.01 * seed)
               for c in ('base', 'lr') for seed in (1, 2)
               for step in (100, 200)
               if name == 'drums' or c == 'base'], 'base')]
  drawn, titles, figures = [], [], []
  real = report._plot_config

  def spy(ax, mine, config, is_reference, colors):
    drawn.append((id(ax), config, {r['dataset'] for r in mine}))
    return real(ax, mine, config, is_reference, colors)

  monkeypatch.setattr(report, '_plot_config', spy)
  import matplotlib.axes
  real_title = matplotlib.axes.Axes.set_title
  monkeypatch.setattr(matplotlib.axes.Axes, 'set_title',
                      lambda self, text, **kw: (titles.append(text),
                                                real_title(self, text)))
  import matplotlib.figure
  real_layout = matplotlib.figure.Figure.tight_layout

  def layout(figure, *args, **kwargs):
    figures.append(len(figure.axes))  # the panels, laid out to fit
    return real_layout(figure, *args, **kwargs)

  monkeypatch.setattr(matplotlib.figure.Figure, 'tight_layout', layout)
  path = str(tmp_path / 'lwlrap.png')
  report.plot(rows, 'base', path)
  with open(path, 'rb') as f:
    assert struct.unpack('>II', f.read(24)[16:24]) == (1600, 500)
  assert figures == [2]
  assert [(c, d) for _, c, d in drawn] == [
      ('lr', {'drums'}), ('base', {'drums'}), ('base', {'instruments'})]
  assert drawn[0][0] == drawn[1][0] != drawn[2][0]
  assert titles == ['drums: Test lwlrap: mean and 95% interval over 2 seeds',
                    'instruments: Test lwlrap: mean and 95% interval over 2 '
                    'seeds']
