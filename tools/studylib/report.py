"""The summary of a study: results.csv, table.csv, table.md and the
plots."""

import csv
import itertools
import os

from tagger.core import files
from tools.studylib.spec import POOLED
from tools.studylib.stats import collect
from tools.studylib.stats import pooled
from tools.studylib.stats import summarize

RESULT_COLUMNS = ('config', 'seed', 'step', 'lwlrap', 'eval_file')
TABLE_COLUMNS = ('config', 'step', 'seeds', 'mean', 'low', 'high', 'paired',
                 'diff', 'diff_low', 'diff_high')


def results_csv(results, by_dataset=False):
  """results: (config, seed, step, lwlrap, eval file) tuples, each with its
  dataset first if by_dataset."""
  columns = ('dataset',) * by_dataset + RESULT_COLUMNS
  lines = [list(columns)]
  lines += [[repr(v) if k == 'lwlrap' else v for k, v in zip(columns, r)]
            for r in results]
  return _csv_text(lines)


def table_csv(rows, by_dataset=False):
  columns = ('dataset',) * by_dataset + TABLE_COLUMNS
  lines = [list(columns)]
  lines += [['' if row.get(k) is None else row[k] for k in columns]
            for row in rows]
  return _csv_text(lines)


def _csv_text(lines):
  import io
  out = io.StringIO()
  csv.writer(out, lineterminator='\n').writerows(lines)
  return out.getvalue()


def _interval(low, high, sign=''):
  if low is None:
    return '–'
  return '[%s, %s]' % (format(low, sign + '.4f'), format(high, sign + '.4f'))


def table_md(spec, rows, study_dir):
  """rows: summarize's, each with its 'dataset' (and POOLED's) when the spec
  names several."""
  ref = spec.reference
  # Relative to the table's own folder, so that the link holds wherever the
  # study folder and its spec are moved together.
  where = os.path.relpath(spec.path, study_dir)
  several = bool(spec.datasets[0].name)
  tested = ('; '.join('%s: test set `%s`' % (d.name, d.raw_data['test_csv'])
                      for d in spec.datasets) if several else
            'test set `%s`' % spec.datasets[0].raw_data['test_csv'])
  lines = [
      '# Study: test lwlrap', '',
      'Spec [`%s`](%s); seeds %s; %s.' % (
          where, where, ', '.join(map(str, spec.seeds)), tested),
      'Mean over seeds with its 95%% Student t interval; Δ is the paired '
      'difference to the reference `%s` at the same step: the mean of the '
      'per-seed differences over the seeds both have, with its 95%% t '
      'interval. An interval needs 2 seeds.' % ref]
  if several:
    lines += ['Under "%s", each (dataset, seed) pair counts as a seed: the '
              'mean over every dataset and seed, and Δ paired over the pairs '
              'both configurations have.' % POOLED]
  lines += ['', '| configuration | model | hparams | max_steps |',
            '| --- | --- | --- | --- |']
  lines += ['| %s | %s | `%s` | %s |' % (c.name, c.model, c.hparams or '-',
                                         _budget(c))
            for c in spec.configs.values()]
  parts = ([d.name for d in spec.datasets] + [POOLED]) if several else [None]
  for step in sorted({r['step'] for r in rows}):
    lines += ['', '## Step %d' % step]
    for part in parts:
      lines += (['', '### ' + part] if part else []) + _md_table(
          [r for r in rows if r['step'] == step and r.get('dataset') == part],
          ref)
  return '\n'.join(lines) + '\n'


def _md_table(rows, reference):
  return ['', '| configuration | seeds | mean lwlrap | 95%% interval | Δ vs %s'
          ' | 95%% interval of Δ | paired seeds |' % reference,
          '| --- | ---: | ---: | --- | ---: | --- | ---: |'] + [
              _md_row(r, reference) for r in rows]


def _budget(config):
  if not config.steps_before:
    return str(config.max_steps)
  return '%d after %d' % (config.max_steps, config.steps_before)


def _md_row(row, reference):
  if row['config'] == reference:
    diff = ['reference', '', '']
  elif row.get('diff') is None:
    diff = ['–', '–', '0']
  else:
    diff = [format(row['diff'], '+.4f'),
            _interval(row['diff_low'], row['diff_high'], '+'),
            str(row['paired'])]
  return '| %s | %d | %.4f | %s | %s |' % (
      row['config'], row['seeds'], row['mean'],
      _interval(row['low'], row['high']), ' | '.join(diff))


def plot(rows, reference, path):
  """Mean test lwlrap against step per configuration, the 95% interval as a
  band (an error bar for a configuration scored at one step only): a panel
  per dataset where the rows name theirs."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  panels = list(dict.fromkeys(r.get('dataset') for r in rows))
  fig, axes = plt.subplots(1, len(panels), figsize=(8 * len(panels), 5),
                           dpi=100, squeeze=False)
  for ax, panel in zip(axes[0], panels):
    _plot_panel(ax, [r for r in rows if r.get('dataset') == panel], reference,
                panel, plt.rcParams['axes.prop_cycle'].by_key()['color'])
  fig.tight_layout()
  temporary = path + '.tmp.png'
  fig.savefig(temporary)
  plt.close(fig)
  os.replace(temporary, path)


def _plot_panel(ax, rows, reference, dataset, palette):
  configs = list(dict.fromkeys(r['config'] for r in rows))
  # The reference last, so that it is drawn over the others.
  configs.sort(key=lambda c: c == reference)
  styles = _line_styles(palette)
  handles = []  # in drawing order (matplotlib lists error bars last)
  for config in configs:
    mine = [r for r in rows if r['config'] == config]
    handles.append(_plot_config(ax, mine, config, config == reference,
                                styles))
  fewest, most = min(r['seeds'] for r in rows), max(r['seeds'] for r in rows)
  ax.set_title('%sTest lwlrap: mean and 95%% interval over %s seed%s' % (
      dataset + ': ' if dataset else '',
      most if fewest == most else '%d–%d' % (fewest, most),
      '' if most == 1 else 's'))
  ax.set_xlabel('training step')
  ax.set_ylabel('test lwlrap')
  ax.grid(alpha=0.3)
  if configs[-1] == reference:  # drawn last, listed first
    handles = handles[-1:] + handles[:-1]
  ax.legend(handles, [h.get_label() for h in handles], loc='best')


def _line_styles(colors):
  """Endless (colour, line style): each colour solid, then each dashed,
  dotted, dash-dotted, so that a study of more configurations than the
  palette has colours still tells its lines apart."""
  colors = list(colors) or ['C0']  # an empty palette would loop forever
  for dashes in itertools.cycle(('-', '--', ':', '-.')):
    for color in colors:
      yield color, dashes


def _plot_config(ax, rows, config, is_reference, styles):
  """Draws one configuration; returns its legend handle."""
  steps = [r['step'] for r in rows]
  means = [r['mean'] for r in rows]
  low = [r['mean'] if r['low'] is None else r['low'] for r in rows]
  high = [r['mean'] if r['high'] is None else r['high'] for r in rows]
  label = config if config == 'reference' else config + ' (reference)'
  style = (dict(color='black', linewidth=2.5, label=label, zorder=3)
           if is_reference else
           dict(zip(('color', 'linestyle'), next(styles)), linewidth=1.5,
                label=config))
  if len(rows) == 1:
    return ax.errorbar(steps, means,
                       yerr=[[means[0] - low[0]], [high[0] - means[0]]],
                       marker='o', capsize=6, **style)
  (line,) = ax.plot(steps, means, marker='o', markersize=4, **style)
  ax.fill_between(steps, low, high, color=style['color'],
                  alpha=0.15 if is_reference else 0.2, linewidth=0)
  return line


def summary(spec, study_dir):
  """(results, each dataset's rows, the table: those rows and the pooled
  ones, whether there are several datasets) from the eval files."""
  by_dataset = {d.name: collect(spec, study_dir, d) for d in spec.datasets}
  several = bool(spec.datasets[0].name)
  results = [(name,) * several + r for name, found in by_dataset.items()
             for r in found]
  rows = [dict(r, dataset=name) if several else r
          for name, found in by_dataset.items()
          for r in summarize(found, spec.reference)]
  table = rows + ([dict(r, dataset=POOLED)
                   for r in pooled(by_dataset, spec.reference)]
                  if several else [])
  return results, rows, table, several


def write_summary(spec, study_dir):
  """results.csv, table.csv, table.md, lwlrap.png and the spec's plots from
  the eval files; returns the number of results. With several datasets, the
  files give each row its dataset, the tables add the rows pooled over
  them, and the plots a panel per dataset."""
  results, rows, table, several = summary(spec, study_dir)
  files.write_atomically(os.path.join(study_dir, 'results.csv'),
                         results_csv(results, several))
  files.write_atomically(os.path.join(study_dir, 'table.csv'),
                         table_csv(table, several))
  files.write_atomically(os.path.join(study_dir, 'table.md'),
                         table_md(spec, table, study_dir))
  if rows:
    plot(rows, spec.reference, os.path.join(study_dir, 'lwlrap.png'))
  for name, chosen in spec.plots.items():
    mine = [r for r in rows if r['config'] in chosen + (spec.reference,)]
    if any(r['config'] in chosen for r in mine):
      plot(mine, spec.reference,
           os.path.join(study_dir, 'lwlrap-%s.png' % name))
  return len(results)
