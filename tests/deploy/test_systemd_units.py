"""deploy/systemd: both units pass `systemd-analyze verify` silently and score at most 1.5 on `security`."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).parents[2] / "deploy" / "systemd"
SYSTEM_UNITS = Path("/usr/lib/systemd/system")
MAX_EXPOSURE = 1.5

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze (Debian: systemd)")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A root with the system's own units, ours installed, and an executable where ExecStart expects syncd."""
    root = tmp_path_factory.mktemp("root")
    shutil.copytree(SYSTEM_UNITS, root / SYSTEM_UNITS.relative_to("/"), symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    for unit in UNITS.glob("*.service"):
        shutil.copy(unit, root / "etc/systemd/system" / unit.name)
    syncd = root / "opt/syncd/bin/syncd"
    syncd.parent.mkdir(parents=True)
    syncd.write_text("#!/bin/sh\n")
    syncd.chmod(0o755)
    return root


@pytest.mark.parametrize("unit", ["syncd.service", "syncd@sales.service"])
def test_verify_prints_nothing(root: Path, unit: str):
    """`systemd-analyze verify` exits 0 even on unknown keys, so its silence is the check."""
    out = subprocess.run(["systemd-analyze", "verify", f"--root={root}", unit], capture_output=True, text=True)
    assert (out.returncode, out.stdout + out.stderr) == (0, "")


def test_verify_would_catch_a_typo(root: Path):
    """The check above can fail: a misspelt key in a unit makes verify print a warning."""
    broken = root / "etc/systemd/system/syncd-typo.service"
    broken.write_text((UNITS / "syncd.service").read_text().replace("Restart=on-failure", "Restrat=on-failure"))
    out = subprocess.run(["systemd-analyze", "verify", f"--root={root}", broken.name], capture_output=True, text=True)
    assert "Unknown key 'Restrat'" in out.stderr
    broken.unlink()


@pytest.mark.parametrize("unit", ["syncd.service", "syncd@.service"])
def test_security_exposure_at_most_1_5(unit: str):
    """`systemd-analyze security --offline=true` rates each unit's hardening 1.5 or better (0 best, 10 worst)."""
    out = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(UNITS / unit)],
                         capture_output=True, text=True)
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out.stdout)
    assert found, out.stdout + out.stderr
    assert float(found.group(1)) <= MAX_EXPOSURE, out.stdout
