"""tagger/core/runtime.py: the memory available to the process, from the
kernel's MemAvailable and the cgroup v2 limit."""

import pytest


@pytest.mark.parametrize('cgroup,expected', [
    (('4294967296', '1073741824'), 3 * 2 ** 30),  # the limit less what is used
    (('max', '1073741824'), 6000 * 1024 ** 2),  # no limit: MemAvailable
    (('17179869184', '1073741824'), 6000 * 1024 ** 2),  # MemAvailable less
    (None, 6000 * 1024 ** 2),  # no cgroup v2 files
])
def test_available_memory_of_the_kernel_and_the_cgroup(monkeypatch, cgroup,
                                                       expected):
  import io
  from tagger.core import runtime
  contents = {'/proc/meminfo': 'MemTotal:       24000000 kB\n'
                               'MemFree:         1000000 kB\n'
                               'MemAvailable:    %d kB\n' % (6000 * 1024)}
  if cgroup:
    contents['/sys/fs/cgroup/memory.max'] = cgroup[0] + '\n'
    contents['/sys/fs/cgroup/memory.current'] = cgroup[1] + '\n'

  def fake_open(path, *args, **kwargs):
    if path not in contents:
      raise FileNotFoundError(path)
    return io.StringIO(contents[path])

  monkeypatch.setattr(runtime, 'open', fake_open, raising=False)
  assert runtime.available_memory() == expected
  contents.pop('/proc/meminfo')
  assert runtime.available_memory() == (
      3 * 2 ** 30 if cgroup and cgroup[0] == '4294967296' else
      15 * 2 ** 30 if cgroup and cgroup[0] == '17179869184' else None)
