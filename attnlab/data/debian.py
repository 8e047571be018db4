"""Datasets that ship as Debian packages, found (or installed) at a fixed path.

attnlab loads real data offline from files that the system's package manager put on
disk, e.g. ``trans-de-en`` (German-English sentence pairs at ``/usr/share/trans/de-en``)
or ``dataset-fashion-mnist``. :func:`ensure_debian_package` checks that the file is
there and, only when it can do so without asking anyone (running as root with
``apt-get`` available), installs the package with ``apt-get``. It never downloads
anything but that Debian package.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = ["DebianPackageMissing", "ensure_debian_package"]

# Debian policy 5.6.1: lowercase letters, digits, + - . ; at least two characters,
# starting with an alphanumeric.
_PACKAGE_NAME = re.compile(r"[a-z0-9][a-z0-9+.\-]+")
# apt-get's messages when its package lists are missing or stale; `apt-get update` cures them.
_NEEDS_UPDATE = ("Unable to locate package", "has no installation candidate", "404  Not Found")
_APT_ENV = {"DEBIAN_FRONTEND": "noninteractive"}
# apt's package lists; `Translation-<lang>` indexes (package descriptions, read by
# attnlab.data.apt_descriptions) sit there as ..._i18n_Translation-de[.lz4|.gz|...].
APT_LISTS = Path("/var/lib/apt/lists")
_TRANSLATION_INDEX = re.compile(r"_i18n_Translation-([A-Za-z_]+)(?:\.[A-Za-z0-9]+)?$")


class DebianPackageMissing(FileNotFoundError):
    """A data file is missing and the Debian package that ships it could not be installed here."""


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _apt_get() -> str | None:
    return shutil.which("apt-get")


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, **_APT_ENV}, check=False
    )


def _tail(proc: subprocess.CompletedProcess, n: int = 5) -> str:
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    return "\n  ".join(lines[-n:])


def _update_command(apt: str) -> list[str]:
    """``apt-get update``, keeping the languages whose Translation indexes are present.

    A plain ``apt-get update`` deletes every Translation index outside its configured
    languages (by default only English), e.g. the German descriptions fetched with
    ``-o Acquire::Languages=en,de``; the combined German-English corpus would then have
    to fetch them again.
    """
    try:
        names = [p.name for p in APT_LISTS.iterdir()]
    except OSError:
        names = []
    langs = {m.group(1) for n in names if (m := _TRANSLATION_INDEX.search(n))}
    if not langs:
        return [apt, "update"]
    return [apt, "-o", f"Acquire::Languages={','.join(sorted(langs | {'en'}))}", "update"]


def ensure_debian_package(package: str, path: str | os.PathLike) -> Path:
    """Return ``path``, installing the Debian ``package`` that provides it if it is missing.

    When ``path`` does not exist and the process runs as root with ``apt-get`` on the
    PATH, runs ``apt-get install -y --no-install-recommends <package>`` (after
    ``apt-get update`` if the first try fails for lack of package lists), printing a
    one-line note to stderr first. Otherwise nothing is run and the error says which
    command to run.

    Args:
        package: the Debian package name, e.g. ``"trans-de-en"``.
        path: the file or directory the package installs, e.g. ``"/usr/share/trans/de-en"``.

    Returns:
        ``Path(path)``, which exists.

    Raises:
        ValueError: ``package`` is not a valid Debian package name.
        DebianPackageMissing: ``path`` is missing and the package could not be installed;
            the message names the path, the package and the command to run.
    """
    if not isinstance(package, str) or not _PACKAGE_NAME.fullmatch(package):
        raise ValueError(
            f"package must be a Debian package name (lowercase letters, digits, '+', '-', '.'), "
            f"got {package!r}"
        )
    path = Path(path)
    if path.exists():
        return path
    command = f"apt-get install {package}"
    apt = _apt_get()
    if apt is None:
        raise DebianPackageMissing(
            f"{path} not found; it is shipped by the Debian package {package!r}, and apt-get is not "
            f"available here. On Debian/Ubuntu run `sudo {command}`, or copy the file to {path}."
        )
    if not _is_root():
        raise DebianPackageMissing(
            f"{path} not found; it is shipped by the Debian package {package!r}. "
            f"Install it with `sudo {command}`."
        )
    print(f"attnlab: {path} is missing; installing Debian package {package} with apt-get ...",
          file=sys.stderr, flush=True)
    install = [apt, "install", "-y", "--no-install-recommends", package]
    proc = _run(install)
    if proc.returncode != 0 and any(m in proc.stdout + proc.stderr for m in _NEEDS_UPDATE):
        update = _run(_update_command(apt))
        if update.returncode != 0:
            raise DebianPackageMissing(
                f"{path} not found and `apt-get update` failed (exit {update.returncode}) while "
                f"installing {package!r}:\n  {_tail(update)}\nRun `{command}` yourself once apt works."
            )
        proc = _run(install)
    if proc.returncode != 0:
        raise DebianPackageMissing(
            f"{path} not found and `{command}` failed (exit {proc.returncode}):\n  {_tail(proc)}"
        )
    if not path.exists():
        raise DebianPackageMissing(
            f"installed the Debian package {package!r} but {path} is still missing; "
            f"check `dpkg -L {package}` for where its files went"
        )
    return path
