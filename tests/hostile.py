"""The hostile-input matrix's harness (tests/test_hostile_*.py).

A case runs one command in this process, as its bin/ script would (click's own argument parsing
and the project's error handling), and checks the project's three promises:

- an expected failure is one line, ``Error: <message>``, short, with exit status 2 and no
  traceback (:func:`assert_refused`);
- the command stays within a memory bound while it runs (:class:`PeakMemory`, sampled);
- nothing outside the command's output is written, and nothing already there changes
  (:func:`snapshot` before and after, compared by :func:`assert_unchanged`).
"""
from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from click.testing import CliRunner

from keras_ptx import cli
from keras_ptx.tf_setup import tf  # noqa: F401  (imported before any case, so not counted)

MiB = 1 << 20
# What a refused command may add to the test process's resident memory, unless a case says
# otherwise: enough to build a B0 at 64 px and read a tiny dataset, far below any bomb.
MEMORY_BOUND = 1024 * MiB
# The longest ``Error:`` line a case accepts: one sentence naming the input and what is wrong.
LINE_BOUND = 400


class PeakMemory:
    """The highest resident set size above its start, sampled every ``interval`` seconds while
    the ``with`` block runs (a short spike between samples can be missed; a bomb cannot)."""

    def __init__(self, interval: float = 0.002):
        self.interval = interval
        self.peak = 0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self):
        while not self._done.wait(self.interval):
            self.peak = max(self.peak, self._rss() - self._start)

    def __enter__(self):
        self._start, self._done = self._rss(), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss() - self._start)


@dataclass
class Outcome:
    status: int
    stdout: str
    stderr: str
    exception: BaseException | None
    peak: int                    # bytes of resident memory above the start, at the highest


def run(name: str, args: list[str], env: dict | None = None) -> Outcome:
    """Run command ``name`` (as ``bin/<name>``) with ``args`` in this process."""
    command = cli.main.get_command(None, name)
    with PeakMemory() as memory:
        result = CliRunner().invoke(command, [str(a) for a in args], env=env,
                                    prog_name=name, catch_exceptions=True)
    exception = None if isinstance(result.exception, SystemExit) else result.exception
    return Outcome(result.exit_code, result.stdout, result.stderr, exception, memory.peak)


def assert_refused(outcome: Outcome, *fragments: str, memory: int = MEMORY_BOUND):
    """Exit 2 with one short ``Error:`` line holding every fragment, no traceback, and no more
    than ``memory`` bytes of resident memory added while it ran."""
    lines = outcome.stderr.splitlines()
    assert outcome.exception is None, f"{outcome.exception!r}: {lines}"
    assert outcome.status == 2, (outcome.status, lines)
    assert len(lines) == 1 and lines[0].startswith("Error: "), lines
    assert len(lines[0]) <= LINE_BOUND, lines[0][:LINE_BOUND * 2]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert outcome.peak <= memory, f"peak {outcome.peak / MiB:.0f} MiB > {memory / MiB:.0f} MiB"


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` -> what it is: a file's SHA-256, a link's target, or 'dir'."""
    tree = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            key = str(path.relative_to(root))
            if path.is_symlink():
                tree[key] = "-> " + os.readlink(path)
            elif path.is_dir():
                tree[key] = "dir"
            else:
                tree[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return tree


def assert_unchanged(before: dict[str, str], root: Path, *outputs: str):
    """Nothing under ``root`` changed since ``before`` was taken, except under ``outputs``
    (paths relative to ``root``) -- the places the command was told to write."""
    def outside(tree):
        return {key: value for key, value in tree.items()
                if not any(key == out or key.startswith(out.rstrip("/") + "/") for out in outputs)}
    after = snapshot(root)
    changed = sorted(set(outside(before).items()) ^ set(outside(after).items()))
    assert not changed, changed
