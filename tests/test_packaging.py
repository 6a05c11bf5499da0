"""What a wheel installs: every package of the source tree, with its py.typed, and the
``wolfhub`` command (an editable install would hide a package left out)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOP_LEVEL = ("hubdomain", "actors", "hub", "wolfhub")


def test_the_wheel_carries_every_package_and_the_command(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                    "-q", "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True,
                   timeout=300, cwd=tmp_path)
    (wheel,) = tmp_path.glob("wolfinch_hub-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(n).decode() for n in names
                            if n.endswith(".dist-info/entry_points.txt"))
    packages = sorted(str(init.parent.relative_to(ROOT))
                      for top in TOP_LEVEL for init in (ROOT / top).rglob("__init__.py"))
    assert "hub/compat" in packages
    for package in packages:
        assert f"{package}/__init__.py" in names, package
    for top in TOP_LEVEL:
        assert f"{top}/py.typed" in names, top
    assert not any(name.startswith(("tests/", "bench/")) for name in names)
    assert "wolfhub = wolfhub.cli:main" in entry_points
