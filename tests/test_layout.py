"""The package's shape: every subpackage installed, the layers kept, no emulator at run time."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_gateway_package_is_listed_for_installation() -> None:
    """pyproject lists packages by name: a new subpackage left out would install nowhere."""
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    on_disk = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "gateway").rglob("__init__.py")
    }
    assert on_disk <= listed
    assert not any(name.startswith("whatsapp_emulator") for name in listed)


def test_the_layer_check_passes() -> None:
    """tools/check_layers.py (also run by `make check`): no cycle, no import from above."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "check_layers.py")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def test_the_layer_check_fails_on_an_import_from_a_layer_above(tmp_path: Path) -> None:
    """Planted in a copy of the package: the store importing the servicer, and a cycle."""
    copy = tmp_path / "project"
    (copy / "tools").mkdir(parents=True)
    (copy / "tools" / "check_layers.py").write_text(
        (ROOT / "tools" / "check_layers.py").read_text()
    )
    subprocess.run(["cp", "-r", str(ROOT / "gateway"), str(copy / "gateway")], check=True)
    fence = copy / "gateway" / "store" / "fence.py"
    fence.write_text(fence.read_text() + "\nfrom gateway.serving import servicer  # planted\n")
    identifiers = copy / "gateway" / "identifiers.py"
    identifiers.write_text(identifiers.read_text() + "\nimport gateway.deadline  # planted\n")
    deadline = copy / "gateway" / "deadline.py"
    deadline.write_text(deadline.read_text() + "\nimport gateway.identifiers  # planted\n")
    done = subprocess.run(
        [sys.executable, str(copy / "tools" / "check_layers.py")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "gateway.store.fence (store) imports gateway.serving.servicer (serving)" in done.stderr
    assert "import cycle: gateway.deadline -> gateway.identifiers -> gateway.deadline" in (
        done.stderr
    )


def test_the_runtime_package_holds_no_emulator() -> None:
    """The emulator (and its unauthenticated control API) is a separate, development-only
    distribution; the gateway's own files never import it except `identity-gateway
    emulator`, which says how to install it when it is missing."""
    assert not list((ROOT / "gateway").rglob("*emulator*"))
    importers = [
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "gateway").rglob("*.py")
        if "whatsapp_emulator" in path.read_text()
    ]
    assert importers == ["gateway/app/cli.py"]
