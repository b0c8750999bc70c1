"""python -m pretrain.train --config configs/X.yaml [--print-config] [dotted.key=value ...]

One rank of a training run. Alone it runs as world size 1; under torchrun, deepspeed or srun it
reads the rank variables they set. Every check that needs no GPU (config, command line, data
folders) runs first, before torch and DeepSpeed start. SIGUSR1, SIGTERM or a first Ctrl-C: save
at the next sync step and exit 75; a second Ctrl-C: stop at once without saving (130). Exit
codes: 0 done, 75 stopped on a signal (resume me), 2 config/data/checkpoint error, 130 stopped
by a second Ctrl-C, 1 anything else."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

from pretrain.exit_codes import EXIT_CONFIG, EXIT_FAILED, EXIT_OK
from pretrain.logs import set_deepspeed_level, setup_logging

log = logging.getLogger("pretrain.train")


def parse_args(argv: list[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=prog or "python -m pretrain.train", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="run config YAML (may name a `base:` file)")
    p.add_argument("--print-config", action="store_true",
                   help="check everything, print the resolved config as YAML (bases, overrides, "
                   "paths, vocabulary from the data) and exit 0 without training")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dotted overrides, e.g. train.max_steps=100 deepspeed.zero_stage=2")
    return p.parse_intermixed_args(argv)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = parse_args(argv, prog)
    setup_logging()
    # torch.distributed warns about DeepSpeed's collective names on every call: noise, not news.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed")
    from pretrain.configlib import ConfigError, dump_yaml
    from pretrain.train.config import config_to_dict
    from pretrain.train.distenv import resolve_dist_env
    from pretrain.train.preflight import check_run

    try:
        denv = resolve_dist_env()
        setup_logging(denv.rank)
        if not args.print_config:
            log.info("rank %d/%d starting: %s", denv.rank, denv.world_size, " ".join(sys.argv[1:]))
        cfg = check_run(args.config, args.overrides, world_size=denv.world_size)  # no torch yet
    except (ConfigError, RuntimeError) as e:
        log.error("%s", e)
        return EXIT_CONFIG
    if args.print_config:
        sys.stdout.write(dump_yaml(config_to_dict(cfg)))
        return EXIT_OK
    return _train(cfg, denv)


def _train(cfg, denv) -> int:
    """Start the process group and DeepSpeed, train, close."""
    from data_tools.remote import RemoteError, RemoteUnavailable
    from pretrain.configlib import ConfigError
    from pretrain.data import DataError
    from pretrain.train.checkpoint import CheckpointError, CheckpointSaveError
    from pretrain.train.ckpt_writer import fork_writer
    from pretrain.train.engine import init_distributed
    from pretrain.train.loop import NonFiniteLoss, Trainer
    from pretrain.train.runlock import RunDirBusy
    from pretrain.train.signals import StopFlag

    trainer, code, error = None, EXIT_FAILED, None
    set_deepspeed_level(cfg.logging.deepspeed_level)  # its INFO chatter only when asked for
    # checkpoint.async: the writer forks now, before any thread of the process group exists
    # (auto may still decide for synchronous saves: the trainer then ends it unused)
    writer = fork_writer() if cfg.checkpoint.async_ is not False else None
    stop = StopFlag()  # from here on a signal means "save and stop", even during start-up
    try:
        device = init_distributed(denv)
        trainer = Trainer(cfg, denv, device, stop, writer=writer)
        code = trainer.run()
        return code
    except RemoteUnavailable as e:  # object storage failed inside a step: see remote_data.py
        _report(e, denv.rank)
        error = str(e)
        return EXIT_FAILED
    except (ConfigError, DataError, CheckpointError, RunDirBusy, RemoteError) as e:
        _report(e, denv.rank)
        code, error = EXIT_CONFIG, str(e)
        return code
    except (NonFiniteLoss, CheckpointSaveError) as e:
        _report(e, denv.rank)
        error = str(e)
        return EXIT_FAILED
    except BaseException as e:  # a traceback follows; the exit record says what it was
        error = f"{type(e).__name__}: {e}"
        raise
    finally:
        if trainer is not None:
            trainer.close(code, error)  # run_events.jsonl: the exit code and step
        if writer is not None:
            writer.close()  # done already unless the trainer never started
        _teardown()
        log.info("rank %d exiting", denv.rank)


def _report(err: Exception, rank: int) -> None:
    """One message per error: one that every rank raised alike is reported by rank 0 only."""
    if rank == 0 or not getattr(err, "all_ranks", False):
        log.error("%s", err)


def _teardown() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def exit_now(code: int) -> None:
    """Exit without the interpreter's slow teardown (seconds of C++ destructors after
    DeepSpeed; the note on rare SIGABRTs at ZeRO-3 exit): everything that must be written has
    been closed explicitly by then."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
