"""The locked stack: write it and check an environment against it (stdlib only).

    python scripts/deps.py freeze requirements/cpu.lock      # the running env -> the lock (on purpose only)
    python scripts/deps.py check requirements/cpu.lock       # the running env == the lock, or exit 1 with the diff

The lock is ``pip freeze`` of a venv in which ``scripts/install.sh`` ran and the whole suite passed (minus
libra-cli itself); ``scripts/install.sh`` installs it as constraints unless ``LIBRA_UNLOCKED=1``.
``scripts/check_deps.sh oldest|newest`` records what it tested with ``freeze`` too.
"""

from __future__ import annotations

import platform
import re
import subprocess
import sys
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SELF = "libra-cli"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed() -> dict[str, str]:
    """``pip freeze`` of the running interpreter as {canonical name: version} (local labels like +cpu kept)."""
    out = subprocess.run([sys.executable, "-m", "pip", "freeze", "--all", "--exclude-editable"], check=True,
                         capture_output=True, text=True).stdout
    pins: dict[str, str] = {}
    for line in out.splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", line)
        if m and canonical(m.group(1)) not in (SELF, "pip", "setuptools", "wheel"):
            pins[canonical(m.group(1))] = m.group(2)
    return pins


def read_lock(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==", 1)
            pins[canonical(name)] = version.strip()
    return pins


def freeze(path: Path) -> None:
    pins = installed()
    header = [
        f"# `pip freeze` (minus libra-cli) written by `python scripts/deps.py freeze` on {date.today().isoformat()}",
        f"# (Python {platform.python_version()}, {platform.system()} {platform.machine()}). See docs/dependencies.md:",
        "# a *.lock is what scripts/install.sh installs as constraints (LIBRA_UNLOCKED=1 floats), refreshed on purpose",
        "# only; tested-*.txt is what scripts/check_deps.sh tested. torch carries no local label (+cpu).",
    ]
    lines = [f"{n}=={v.split('+', 1)[0] if n == 'torch' else v}" for n, v in sorted(pins.items())]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(header + lines) + "\n", encoding="utf-8")
    print(f"wrote {path} ({len(lines)} packages)", file=sys.stderr)


def check(path: Path) -> int:
    """0 when the running env holds exactly the lock's versions (torch's local label ignored)."""
    want, have = read_lock(path), installed()
    have = {n: (v.split("+", 1)[0] if n == "torch" else v) for n, v in have.items()}
    diff = [f"  {n}: lock {want.get(n, '-')}, installed {have.get(n, '-')}" for n in sorted(set(want) | set(have))
            if want.get(n) != have.get(n)]
    if diff:
        print(f"the environment differs from {path} in {len(diff)} package(s):\n" + "\n".join(diff), file=sys.stderr)
        return 1
    print(f"the environment matches {path} ({len(want)} packages)", file=sys.stderr)
    return 0


def main() -> int:
    if len(sys.argv) < 3 or sys.argv[1] not in ("freeze", "check"):
        print(__doc__, file=sys.stderr)
        return 2
    if sys.argv[1] == "freeze":
        freeze(Path(sys.argv[2]))
        return 0
    return check(Path(sys.argv[2]))


if __name__ == "__main__":
    sys.exit(main())
