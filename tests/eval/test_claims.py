"""The claim protocol of claims.py on its own: generations, stale claims
taken over, and races decided by the exclusive create."""

import os

from tagger.eval import claims


def test_claim_generations(tmp_path):
  """try_claim on its own: a first claim, a live one, a stale one taken
  over by the next generation, and a marker that ends it all."""
  eval_dir = str(tmp_path)
  state, claim = claims.try_claim(eval_dir, 7, timeout=60)
  assert state == claims.OWNED and claim.generation == 0
  assert claims.try_claim(eval_dir, 7, timeout=60)[0] == claims.HELD
  os.utime(claim.path, (0, 0))  # its holder died long ago
  state, successor = claims.try_claim(eval_dir, 7, timeout=60)
  assert state == claims.OWNED and successor.generation == 1
  assert successor.taken_over.startswith('eval-7.claim, held by ')
  claim.refresh()
  assert claim.lost and not successor.lost
  assert claims.try_claim(eval_dir, 7, timeout=60)[0] == claims.HELD
  # The eval-N.claim* of other checkpoints are not this one's.
  assert claims.try_claim(eval_dir, 70, timeout=60)[0] == (
      claims.OWNED)
  assert sorted(claims.claims_of(eval_dir, 7)) == [0, 1]
  with open(claims.marker_path(eval_dir, 7), 'w') as f:
    f.write('done')
  successor.finished = True
  successor.release()
  assert claims.claims_of(eval_dir, 7) == {}
  assert claims.try_claim(eval_dir, 7, timeout=60) == (
      claims.DONE, None)
  assert claims.claims_of(eval_dir, 7) == {}


def test_claim_races_are_decided_by_the_exclusive_create(tmp_path,
                                                          monkeypatch):
  """Another process makes its claim between this one's look at the claims
  and its create (simulated by a look that returns what was there just
  before): this process must not hold the checkpoint too, whether it meant
  to make the first claim or to take a stale one over. And a checkpoint
  finished just before a claim is made is not evaluated again."""
  eval_dir = str(tmp_path)
  real = claims.claims_of

  def look_too_early(before):
    looks = []

    def claims_of(folder, step):
      looks.append(step)
      return dict(before) if len(looks) == 1 else real(folder, step)

    monkeypatch.setattr(claims, 'claims_of', claims_of)

  first = claims.claim_path(eval_dir, 5)
  with open(first, 'w') as f:
    f.write('otherhost pid 22 since now\n')
  look_too_early({})  # saw no claim
  state, detail = claims.try_claim(eval_dir, 5, timeout=60)
  assert state == claims.HELD and 'otherhost pid 22' in detail, detail

  os.utime(first, (0, 0))  # its holder died
  second = claims.claim_path(eval_dir, 5, 1)
  with open(second, 'w') as f:
    f.write('thirdhost pid 33 since now\n')
  look_too_early({0: first})  # saw the stale claim, not its successor
  state, detail = claims.try_claim(eval_dir, 5, timeout=60)
  assert state == claims.HELD and 'thirdhost pid 33' in detail, detail

  assert sorted(real(eval_dir, 5)) == [0, 1]
  with open(first) as f:
    assert f.read() == 'otherhost pid 22 since now\n'
  with open(second) as f:
    assert f.read() == 'thirdhost pid 33 since now\n'

  # Checkpoint 6 was finished, and its claims removed, between this
  # process's look for the marker and its look at the claims: the claim it
  # then makes must be let go.
  with open(claims.marker_path(eval_dir, 6), 'w') as f:
    f.write('done')
  real_marker = claims.marker_path
  looks = []

  def marker_path(folder, step):
    looks.append(step)
    return real_marker(folder, step) + ('.not-yet' if len(looks) == 1
                                        else '')

  monkeypatch.setattr(claims, 'marker_path', marker_path)
  monkeypatch.setattr(claims, 'claims_of', real)
  assert claims.try_claim(eval_dir, 6, timeout=60) == (claims.DONE,
                                                           None)
  assert real(eval_dir, 6) == {}
