"""python -m launch.signal_trainers LAUNCH_ID SIGNAL — signal this machine's trainer processes
of one `launch hostfile` run.

`launch hostfile` puts a fresh ARROWTRAIN_LAUNCH_ID into every rank's environment (over ssh
through DeepSpeed's env file). On a stop signal it runs this module on every host (through pdsh,
or directly with --no-ssh): it finds the processes whose environment holds that id and whose
command line is `python ... -m pretrain.train`, and sends them the signal — never DeepSpeed's
launch.py (which would kill its children and lose exit code 75), never a process of another run.
Prints one line `signalled HOST PID...`; exits 0 even when none was found (yet).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import sys
from pathlib import Path

from pretrain.exit_codes import EXIT_OK

LAUNCH_ID_VAR = "ARROWTRAIN_LAUNCH_ID"
TRAIN_MODULE = b"pretrain.train"


def _is_trainer(argv: list[bytes]) -> bool:
    """`python [-u ...] -m pretrain.train ...` — not launch.py, which has it as a later argument."""
    return any(a == b"-m" and b == TRAIN_MODULE for a, b in zip(argv, argv[1:]))


def trainer_pids(launch_id: str, proc: Path = Path("/proc")) -> list[int]:
    """PIDs of this machine's trainers started by the launch with that id (Linux /proc; only
    processes we may read, i.e. our own)."""
    marker = f"{LAUNCH_ID_VAR}={launch_id}".encode()
    found = []
    for d in proc.glob("[0-9]*"):
        try:
            if marker not in (d / "environ").read_bytes().split(b"\0"):
                continue
            if _is_trainer((d / "cmdline").read_bytes().split(b"\0")):
                found.append(int(d.name))
        except (OSError, ValueError):  # gone, or not ours
            continue
    return sorted(found)


def signal_trainers(launch_id: str, sig: int) -> list[int]:
    """Send `sig` to every trainer of that launch on this machine; the PIDs signalled."""
    sent = []
    for pid in trainer_pids(launch_id):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
            sent.append(pid)
    return sent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m launch.signal_trainers", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("launch_id", metavar="LAUNCH_ID", help=f"the run's {LAUNCH_ID_VAR}")
    p.add_argument("signal", metavar="SIGNAL", choices=["SIGUSR1", "SIGTERM"],
                   help="SIGUSR1 or SIGTERM (both mean: save and exit 75)")
    args = p.parse_args(argv)
    sent = signal_trainers(args.launch_id, signal.Signals[args.signal])
    print(f"signalled {socket.gethostname()} {' '.join(map(str, sent)) or '(none)'}", flush=True)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
