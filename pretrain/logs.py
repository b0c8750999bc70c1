"""Rank-aware logging, set up once per process: INFO and above from rank 0, WARNING and above
from every rank, the latter tagged with rank and host."""

from __future__ import annotations

import logging
import os
import socket
import sys

_CONFIGURED = False


def env_rank() -> int:
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))


class _RankFilter(logging.Filter):
    def __init__(self, rank: int):
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        return self.rank == 0 or record.levelno >= logging.WARNING


def setup_logging(rank: int | None = None, level: int = logging.INFO) -> None:
    """Configure the root logger once. Later calls only update the rank."""
    global _CONFIGURED
    rank = env_rank() if rank is None else rank
    root = logging.getLogger()
    if _CONFIGURED:
        for h in root.handlers:
            for f in h.filters:
                if isinstance(f, _RankFilter):
                    f.rank = rank
        return
    host = socket.gethostname().split(".")[0]
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RankFilter(rank))
    fmt = f"%(asctime)s [rank {rank} {host}] %(levelname)s %(name)s: %(message)s"
    handler.setFormatter(logging.Formatter(fmt, datefmt="%H:%M:%S"))
    root.handlers[:] = [handler]
    root.setLevel(level)
    # DeepSpeed and friends are chatty at INFO; keep their warnings.
    for noisy in ("torch.distributed", "wandb"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    set_deepspeed_level()
    _CONFIGURED = True


DEEPSPEED_LOG_VAR = "ARROWTRAIN_DEEPSPEED_LOG"  # warning (default) | info | debug
DEEPSPEED_LEVELS = {"warning": logging.WARNING, "info": logging.INFO, "debug": logging.DEBUG}
_deepspeed_level = [logging.WARNING]


def set_deepspeed_level(name: str | None = None) -> int:
    """DeepSpeed's own log lines (its loggers "DeepSpeed" and "deepspeed", and the prints of
    its checkpoint tools, distenv.deepspeed_output) from this level on: ARROWTRAIN_DEEPSPEED_LOG
    if set, else `name` (logging.deepspeed_level), else warning — its INFO chatter stays out
    unless asked for. Applied again after DeepSpeed's import, which resets its logger."""
    env = os.environ.get(DEEPSPEED_LOG_VAR, "").strip().lower()
    level = DEEPSPEED_LEVELS.get(env) or DEEPSPEED_LEVELS.get(name or "", logging.WARNING)
    _deepspeed_level[0] = level
    for logger_name in ("DeepSpeed", "deepspeed"):
        logger = logging.getLogger(logger_name)
        logger.setLevel(level)
        for h in logger.handlers:
            h.setLevel(level)
    return level


def deepspeed_level() -> int:
    return _deepspeed_level[0]


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name)


def human_duration(seconds: float) -> str:
    """'< 1 min', '12 min', '3 h 5 min', '2 d 4 h' — never '0.0 min'."""
    minutes = round(seconds / 60)
    if minutes < 1:
        return "< 1 min"
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"
