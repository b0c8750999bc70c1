"""Stop requests: what a rank does on SIGUSR1, SIGTERM and Ctrl-C (SIGINT), and how a launcher
tells a repeated signal from a new request. Torch-free (the launchers import it).

- SIGUSR1, SIGTERM, and a first SIGINT set a flag; the ranks agree on it at the next sync step,
  save a checkpoint and exit 75 (design §5). The rank says at once — from a thread woken by
  the signal itself (`signal.set_wakeup_fd`), not after the step in progress, which on a big
  model on a CPU can take minutes — after which step the save will happen and about when.
- A second SIGINT (Ctrl-C in a terminal running the trainer itself) stops at once without
  saving (exit 130); the last checkpoint is kept.
- The same signal again within SAME_REQUEST_S of the one that counted is the same request:
  `timeout` relays the SIGINT that the terminal also sends to its child, so one Ctrl-C
  arrives twice (launch/local.py, launch/hostfile.py, and the ranks use the same rule).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable

from pretrain.exit_codes import EXIT_INTERRUPTED

log = logging.getLogger("pretrain.train")

SAME_REQUEST_S = 2.0  # a second signal this soon after the first is the same request
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)


class Repeats:
    """Tells a repeated signal from a new request: the same signal again within `window`
    seconds of the last one that counted is a repeat."""

    def __init__(self, window: float = SAME_REQUEST_S):
        self.window = window
        self.counted: dict[int, float] = {}

    def is_repeat(self, signum: int) -> bool:
        now, last = time.monotonic(), self.counted.get(signum)
        if last is not None and now - last < self.window:
            return True
        self.counted[signum] = now
        return False


_FORK_HOOK: list[bool] = []


def _forget_in_children() -> None:
    """A forked child (a DataLoader worker) must not write its own signals into the parent's
    wakeup pipe (Ctrl-C in a terminal reaches the whole process group)."""
    def reset() -> None:
        with contextlib.suppress(ValueError, OSError):
            signal.set_wakeup_fd(-1)

    if not _FORK_HOOK:
        os.register_at_fork(after_in_child=reset)
        _FORK_HOOK.append(True)


def _default_when() -> str:
    return "at the next sync step"


class StopFlag:
    """SIGUSR1/SIGTERM/SIGINT set a local flag; ranks agree on it at the next sync step (at
    most train.sync_every_steps steps or about train.sync_every_seconds later). `when` (set by
    the trainer) words when that will be."""

    def __init__(self):
        self.requested = False
        self.when: Callable[[], str] = _default_when
        self.before_exit: Callable[[], None] | None = None  # a stop without saving: last words
        self._repeats = Repeats()
        self._interrupts = 0
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)
            # Restart interrupted system calls: a signal must not break a gloo/NCCL socket
            # operation in flight; the flag is read at the next step boundary.
            signal.siginterrupt(sig, False)
        self._watching = self._watch()

    def _handle(self, signum, _frame) -> None:
        """The Python-level handler (runs in the main thread, between two bytecodes: after a
        long C++ call returns). Sets the flag; speaks only when no watcher thread does."""
        self.requested = True
        if not self._watching:
            self._notice(signum)

    def _watch(self) -> bool:
        """A daemon thread that hears each signal the moment it arrives (C-level handler ->
        wakeup fd), so the rank answers during a long step. False where that cannot be set
        up (not the main thread, or another wakeup fd in place)."""
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        try:
            previous = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        except ValueError:  # not the main thread
            previous = None
        if previous != -1:
            if previous is not None:
                signal.set_wakeup_fd(previous)
            os.close(read_fd)
            os.close(write_fd)
            return False
        threading.Thread(target=self._listen, args=(read_fd,), name="stop-signals",
                         daemon=True).start()
        _forget_in_children()
        return True

    def _listen(self, read_fd: int) -> None:
        while True:
            try:
                data = os.read(read_fd, 64)
            except OSError:
                return
            if not data:
                return
            for signum in data:
                if signum in STOP_SIGNALS:
                    self.requested = True
                    self._notice(signum)

    def _notice(self, signum: int) -> None:
        """Say what the signal does: the first asks for a save and a stop (when); a second
        SIGINT stops at once without saving; a repeat within SAME_REQUEST_S is no news."""
        if self._repeats.is_repeat(signum):
            return
        name = signal.Signals(signum).name
        if signum == signal.SIGINT:
            self._interrupts += 1
            if self._interrupts > 1:
                self._stop_now(name, self.before_exit)
                return
        with contextlib.suppress(Exception):  # never let the words break the stop
            again = (f"; Ctrl-C again (more than {SAME_REQUEST_S:.0f} s from now) stops at "
                     "once without saving" if signum == signal.SIGINT else "")
            log.warning("received %s: will save a checkpoint and stop %s%s", name, self.when(),
                        again)
            return
        log.warning("received %s: will save and stop at the next sync step", name)

    @staticmethod
    def _stop_now(name: str, before_exit: Callable[[], None] | None) -> None:
        log.error("received %s again: stopping now, without saving (the last checkpoint is "
                  "kept; the same command resumes from it)", name)
        if before_exit is not None:
            with contextlib.suppress(Exception):
                before_exit()
        logging.shutdown()
        os._exit(EXIT_INTERRUPTED)
