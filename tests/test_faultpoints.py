"""The SYNCD_TEST_KILL_AT crash hook: dead at exactly the Nth crossing of the named point, inert otherwise."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

SCRIPT = """
from syncd import faultpoints as f
for point in ("claimed", "uploaded", "claimed", "associated", "claimed"):
    f.reach(point)
    print(point, flush=True)
"""


def crossings(spec: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SYNCD_TEST_KILL_AT"}
    if spec is not None:
        env["SYNCD_TEST_KILL_AT"] = spec
    return subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=30)


def test_nth_crossing_of_the_named_point_kills_the_process():
    """claimed:2 lets the first 'claimed' and other points pass, and SIGKILLs at the second 'claimed'."""
    done = crossings("claimed:2")
    assert done.returncode == -signal.SIGKILL
    assert done.stdout.split() == ["claimed", "uploaded"]


def test_unset_or_never_reached_lets_everything_run():
    """Without the variable, or with N beyond the crossings made, every point passes."""
    assert crossings(None).stdout.split() == ["claimed", "uploaded", "claimed", "associated", "claimed"]
    assert crossings("claimed:4").returncode == 0


def test_malformed_setting_is_refused_naming_the_variable():
    """An unknown point or a bad count fails at import, naming the variable and the valid points."""
    for spec in ("nowhere:1", "claimed", "claimed:0"):
        done = crossings(spec)
        assert done.returncode == 1
        assert "SYNCD_TEST_KILL_AT" in done.stderr and "checkpoint" in done.stderr
