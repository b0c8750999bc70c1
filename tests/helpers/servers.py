"""How a real-server fixture that cannot run says so (SLURM in tests/launch/conftest.py, sshd in
helpers/sshd.py): not root here, a skip; packages missing, a failure naming `make sysdeps`
(tests never run apt); a server that does not come up, a failure with its log."""

from __future__ import annotations

import os


class Unavailable(RuntimeError):
    """The server cannot be set up here (reason in the message): tests skip."""


class StartFailed(RuntimeError):
    """The packages are there but the server did not come up: tests fail, loudly."""


class Missing(RuntimeError):
    """Packages are missing: the fixture fails naming `make sysdeps` (tests never run apt)."""


def check_packages(server: str, root_for: str, missing: list[str], packages: list[str]) -> None:
    """Root (the `server` fixture needs it for `root_for`), and none of the binaries that `make
    sysdeps` installs (`packages`) `missing`."""
    if os.geteuid() != 0:
        raise Unavailable(f"the {server} fixture must run as root ({root_for})")
    if missing:
        raise Missing(f"missing {', '.join(missing)}: run `make sysdeps` as root (installs "
                      f"{' '.join(packages)})")
