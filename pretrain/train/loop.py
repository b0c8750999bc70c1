"""One rank of a training run: set-up, resume, the step loop, eval, checkpoints, stops."""

from __future__ import annotations

import gc
import logging
import math
import os
import resource
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from pretrain.configlib import ConfigError, dump_yaml
from pretrain.data import eval_batches, train_batches
from pretrain.exit_codes import EXIT_INTERRUPTED, EXIT_OK, EXIT_RESUME
from pretrain.model import build_model
from pretrain.objectives import EvalContext, open_data
from pretrain.train import checkpoint as ckpt
from pretrain.train import events, reshard
from pretrain.train.async_ckpt import Outcome
from pretrain.train.checkpoint_meta import CheckpointMeta, read_meta, tag_step
from pretrain.train.ckpt_writer import Writer, fork_writer
from pretrain.train.config import RunConfig, config_to_dict
from pretrain.train.distenv import DistEnv
from pretrain.train.engine import grad_accum_steps, initialize, use_gpu
from pretrain.train.init_from import InitFileError, load_init_weights
from pretrain.train.memcheck import Calibration
from pretrain.train.metrics import Metrics
from pretrain.train.preflight import vocab_problem
from pretrain.train.progress import Progress
from pretrain.train.remote_data import RemoteData, eval_indices
from pretrain.train.resume import apply_hyperparameters, check_resume, data_folders, warn_changes
from pretrain.train.runlock import acquire_collective
from pretrain.train.sequence import SequenceParallel
from pretrain.train.signals import StopFlag
from pretrain.train.sync import DeviceStats, Synced, next_interval

log = logging.getLogger("pretrain.train")


class NonFiniteLoss(RuntimeError):
    pass


def _short(seconds: float) -> str:
    """'40 s', '3 min', '2 h 5 min'."""
    from pretrain.logs import human_duration

    return f"{seconds:.0f} s" if seconds < 90 else human_duration(seconds)


def memory_mb() -> float:
    if use_gpu():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def batch_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Tokens in `input_ids` (the source side for encoder-decoders, as flops_per_token counts)."""
    return batch["input_ids"].numel()


@dataclass
class Due:
    """What a step must do (log / eval / save / stop_at_step); each needs a sync first."""

    log: bool
    eval: bool
    save: bool
    stop: bool

    def any(self) -> bool:
        return self.log or self.eval or self.save or self.stop


@dataclass
class Interval:
    """Host seconds (sync waits included), tokens, data waits and the objective's step counts
    (Objective.step_counts, this rank's) since the last log row."""

    seconds: float = 0.0
    tokens: int = 0
    steps: int = 0
    data_wait_s: float = 0.0
    counts: Counter = field(default_factory=Counter)

    def add(self, seconds: float, out: dict[str, Any]) -> None:
        self.seconds += seconds
        self.tokens += out["tokens"]
        self.steps += 1
        self.data_wait_s += out["data_wait_s"]
        self.counts.update(out["counts"])

    def reset(self) -> None:
        self.seconds, self.tokens, self.steps, self.data_wait_s = 0.0, 0, 0, 0.0
        self.counts = Counter()


class SyncClock:
    """Seconds per step between syncs, measured from one sync's end to the next's (the host
    runs ahead of the GPU in between, so only such spans are true step times). A sync passes
    the previous span's figure; the first, the host time so far."""

    def __init__(self):
        self.restart()
        self.last: float | None = None

    def restart(self) -> None:
        self.t0, self.steps = time.perf_counter(), 0

    def seconds_per_step(self) -> float:
        if self.last is not None:
            return self.last
        return (time.perf_counter() - self.t0) / max(1, self.steps + 1)

    def step_done(self, synced: bool) -> None:
        self.steps += 1
        if synced:
            self.last = (time.perf_counter() - self.t0) / self.steps


def freeze_heap() -> None:
    """Put every object alive now out of the cyclic GC's reach (gc.freeze): the imported torch
    and DeepSpeed (~320k objects), then the model and engine, all of which live as long as the
    run. A full collection (DeepSpeed's at engine start, the trainer's at each save) then scans
    only what came after: ~1 ms instead of ~140 ms with torch and DeepSpeed imported (2-core
    Xeon), and a rank started by fork (a test's fork server) no longer copies its inherited
    heap page by page. Reference counting still frees these objects; only garbage cycles among
    them stay, made once at start."""
    gc.freeze()


class Trainer:
    def __init__(self, cfg: RunConfig, denv: DistEnv, device: torch.device,
                 stop: StopFlag | None = None, measure_memory: bool = True,
                 writer: Writer | None = None):
        self.stop = stop or StopFlag()
        self.writer = writer  # checkpoint.async: forked at the rank's start (__main__._train)
        self.stop.when, self.stop.before_exit = self._stop_when, self._stopped_unsaved
        self._loop: tuple[SyncClock, float] | None = None  # (clock, step start) while training
        self.measure_memory = measure_memory  # memory_peak_bytes (pretrain/train/memcheck.py)
        self.denv, self.device = denv, device
        self.rank0 = denv.rank == 0
        self.cfg = cfg
        self.src = open_data(cfg.data, cfg.seed)
        self.objective = self.src.objective
        self._check_vocab()
        self.ckpt_dir = cfg.run_dir / "checkpoints"
        self.gas = grad_accum_steps(cfg, denv.world_size)
        self.sp: SequenceParallel | None = None  # made once the process group runs (_start)
        if self.rank0 and (line := self.objective.describe(self.src)):
            log.info("%s", line)
        self.lock = acquire_collective(cfg.run_dir, denv.rank)  # one run per run folder
        try:
            self._start()
        except BaseException:
            if getattr(self, "memcheck", None) is not None:
                self.memcheck.stop()
            if getattr(self, "saver", None) is not None:
                self.saver.close()
            self._close_uploads()
            self._release_lock()
            raise

    def _check_vocab(self) -> None:
        """The pre-flight filled model.vocab_size (check_run); the data it opened must still
        fit it."""
        vocab = self.cfg.model.vocab_size
        problem = vocab_problem(vocab, self.src.vocab_size, self.src.folders[0].folder)
        if vocab is None or problem:
            err = ConfigError([problem or "model.vocab_size is not set: pass the config through "
                               "pretrain.train.preflight.check_run, which fills it in"])
            err.all_ranks = True
            raise err

    def _start(self) -> None:
        """Resume or start; nothing in the run folder changes before the checkpoint passed."""
        cfg, denv = self.cfg, self.denv
        remote_plan = self._fetch_remote()  # checkpoint.remote: a newer copy there comes here
        found = ckpt.choose_resume(self.ckpt_dir) if cfg.resume == "auto" else None
        self.resume_tag, meta = found or (None, None)
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        # the plan's memory figure; the measured peak counts from here (model states included)
        self.memcheck = Calibration(cfg, denv.world_size, denv.rank, self.device,
                                    self.measure_memory)
        model = build_model(cfg.model)
        self.shapes = ckpt.param_shapes(model)
        self.n_params = sum(p.numel() for p in model.parameters())
        load_tag = self._check_resume(meta) if meta is not None else None
        if cfg.init_from is not None:
            self._init_from(model, resuming=meta is not None)
        if self.rank0:
            if cfg.resume == "never":  # another lineage: no re-sharded copy of the old one
                for path in ckpt.drop_universal_copies(self.ckpt_dir):
                    log.info("removed %s (a re-sharded copy from before this start over)", path)
            (cfg.run_dir / "config.yaml").write_text(dump_yaml(config_to_dict(cfg)))
        torch.manual_seed(cfg.seed + 1 + denv.rank)  # dropout differs between ranks
        universal = load_tag is not None and load_tag != self.resume_tag
        self.sp = SequenceParallel.create(denv.rank, denv.world_size,
                                          cfg.parallel.sequence_parallel_size)
        freeze_heap()  # before DeepSpeed's full collection at engine start
        self.engine, self.scheduler = initialize(model, cfg, denv.world_size, universal, self.sp)
        self.step, self._base = 0, (0, 0)  # (step, consumed samples) this start began at
        if meta is not None:
            same_ranks = meta.world_size == denv.world_size
            ckpt.load(self.engine, self.ckpt_dir, load_tag, restore_rng=same_ranks,
                      rng_tag=self.resume_tag)
            if not same_ranks:  # per-rank RNG files do not map onto another number of ranks
                ckpt.reseed(cfg.seed, meta.step, denv.rank)
            if universal:
                reshard.untie_adam_steps(self.scheduler.optimizer)
            apply_hyperparameters(self.scheduler, cfg)
            self.step, self._base = meta.step, (meta.step, meta.consumed_samples)
            log.info("resumed from %s at step %d", self.ckpt_dir / load_tag, self.step)
        self.ckpt_bytes = meta.total_bytes if meta is not None else ckpt.estimate_bytes(
            self.n_params, cfg.precision, cfg.deepspeed.zero_stage)
        if self.rank0:
            ckpt.warn_low_space(self.ckpt_dir, self.ckpt_bytes,
                                f"as large as {self.resume_tag}" if meta is not None else
                                f"estimated from {self.n_params:,} parameters")
        self.restart_count = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
        self.metrics = Metrics(cfg.run_dir, self.rank0, cfg.logging.wandb, config_to_dict(cfg),
                               self.step)
        self.stats = DeviceStats(self.device, denv.world_size)
        self.remote = RemoteData(self.src, cfg.data.remote_timeout) if self.src.cache else None
        self.next_sync = self.step + 1  # the first step (compiles, warms up) is timed alone
        self.flops_per_token = self._flops_per_token()
        if self.rank0 and not use_gpu():
            self._warn_if_slow_on_cpu()
        self.saver = self._start_async() if cfg.checkpoint.async_ is not False else None
        self.uploader = self._start_uploads(remote_plan)
        self._record_start()
        freeze_heap()  # the engine, optimizer and loggers too: the saves' collections skip them

    def _fetch_remote(self):
        """checkpoint.remote (collective): the store answers, and with `resume: auto` a remote
        copy newer than the local checkpoints is downloaded and verified first
        (pretrain/train/remote_ckpt.py)."""
        c = self.cfg.checkpoint
        if c.remote is None:
            return None
        from pretrain.train import remote_ckpt

        return remote_ckpt.fetch_newer(self.ckpt_dir, c.remote, c.remote_timeout,
                                       self.denv.rank, self.denv.world_size,
                                       download=self.cfg.resume == "auto")

    def _start_uploads(self, plan):
        """This rank's upload thread; the checkpoint resumed from goes up first when the
        remote copy is older (a run stopped before its upload finished)."""
        c = self.cfg.checkpoint
        if c.remote is None:
            return None
        from pretrain.train import remote_ckpt

        uploader = remote_ckpt.Uploader(self.ckpt_dir, c.remote, self.denv.rank,
                                        self.denv.world_size, c.keep_last, c.remote_timeout)
        remote_step = tag_step(plan.remote_latest or "")
        if self.resume_tag and tag_step(self.resume_tag) > (-1 if remote_step is None
                                                            else remote_step):
            uploader.submit(self.ckpt_dir / self.resume_tag)
        return uploader

    def _start_async(self):
        """checkpoint.async true or auto (collective): every rank's share of a checkpoint and
        its host's free RAM, gathered so that every rank decides alike (async_ckpt.choose_async:
        auto goes async only for a large share that host RAM can stage); then the commit
        threads' own gloo group and this rank's writer process. None: synchronous saves."""
        from pretrain.train import async_ckpt

        cfg, rank, world = self.cfg, self.denv.rank, self.denv.world_size
        weights = self.n_params * (2 if cfg.precision in ("bf16", "fp16") else 4)
        mine = async_ckpt.node_share_bytes(self.ckpt_bytes, cfg.deepspeed.zero_stage, [rank],
                                           world, weights)
        ranks = [None] * world  # [(host, share bytes, MemAvailable bytes)]
        dist.all_gather_object(ranks, (socket.gethostname(), mine,
                                       async_ckpt.available_ram_bytes()))
        try:
            background, why = async_ckpt.choose_async(cfg.checkpoint.async_, ranks)
        except async_ckpt.AsyncRefused as e:
            err = ConfigError([str(e)])
            err.all_ranks = True
            raise err from None
        if self.rank0:
            log.info("%s", why)
        writer, self.writer = self.writer, None
        if not background:
            if writer is not None:
                writer.close()  # it never got an arena: it exits at once
            return None
        group = dist.new_group(backend="gloo")  # the commit threads' own collectives
        writer = writer or fork_writer()  # a caller that did not fork one at the start
        return async_ckpt.AsyncCheckpointer(group, cfg.checkpoint.keep_last, writer, mine)

    def _warn_if_slow_on_cpu(self) -> None:
        from pretrain.train.cpu_check import cpu_step_warning

        warning = cpu_step_warning(self.cfg, self.denv.world_size, self.flops_per_token)
        if warning:
            log.warning("%s", warning)

    def _record_start(self) -> None:
        """run_events.jsonl (rank 0): this start passed its checks and holds the run folder
        (`launch status` and `arrowtrain plot` read it; a matching `exit` is written by close)."""
        self.started = True
        if self.rank0:
            events.record(self.cfg.run_dir, "start", step=self.step,
                          resumed_from=self.resume_tag, world_size=self.denv.world_size,
                          max_steps=self.cfg.train.max_steps,
                          checkpoint_async=self.saver is not None)  # auto resolved here

    def _init_from(self, model: torch.nn.Module, resuming: bool) -> None:
        """Load init_from's weights into the fresh model, unless resuming (logged either way)."""
        path = self.cfg.init_from
        if resuming:
            log.info("init_from %s ignored: the run resumes from checkpoint %s", path,
                     self.ckpt_dir / self.resume_tag)
            return
        try:
            load_init_weights(model, path)
        except (OSError, RuntimeError, InitFileError) as e:  # pre-flight checked it: changed?
            err = ConfigError([str(e) if isinstance(e, InitFileError) else
                               f"init_from {path}: cannot load it into the model: {e}"])
            err.all_ranks = True
            raise err from None
        log.info("starting from the weights of init_from %s (step 0, fresh optimizer and lr "
                 "schedule)", path)

    def _check_resume(self, meta: CheckpointMeta) -> str:
        """Refuse an incompatible checkpoint (nothing changed); re-shard a ZeRO checkpoint for
        another number of ranks or stage. Returns the tag to load."""
        cfg, denv, tag_dir = self.cfg, self.denv, self.ckpt_dir / self.resume_tag
        changes = check_resume(meta, cfg, self.shapes, self.src.fingerprint,
                               data_folders(self.src), tag_dir)
        if self.rank0:
            warn_changes(changes, tag_dir, meta, cfg)
        moved = meta.world_size != denv.world_size
        if self.rank0 and (moved or meta.zero_stage != cfg.deepspeed.zero_stage):
            log.warning("%s: %s (the data continues exactly, at sample %d%s)", tag_dir,
                        reshard.describe(meta, denv.world_size, cfg.deepspeed.zero_stage),
                        meta.consumed_samples, "; the per-rank RNG streams are re-seeded "
                        "from seed, step and rank" if moved else "")
        if not reshard.needs_universal(meta, denv.world_size, cfg.deepspeed.zero_stage):
            return self.resume_tag
        t0 = time.perf_counter()
        tag = reshard.convert_collective(self.ckpt_dir, self.resume_tag, meta)
        if self.rank0:
            log.info("universal checkpoint %s ready in %.1f s", self.ckpt_dir / tag,
                     time.perf_counter() - t0)
        return tag

    def consumed_samples(self) -> int:
        """Samples the steps done so far consumed (the global batch may have changed at the last
        resume: the steps before it count at the batch of their time)."""
        step0, samples0 = self._base
        return samples0 + (self.step - step0) * self.cfg.train.global_batch_size

    # ---- one optimizer step ------------------------------------------------------------

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def _piece(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], float]:
        """This rank's piece of a host micro-batch and its loss weight (sequence parallelism,
        pretrain/train/sequence.py); the batch itself and 1 otherwise."""
        if self.sp.size == 1:
            return batch, 1.0
        return self.sp.piece(batch, self.cfg.model.doc_masking)

    def train_step(self, batches) -> dict[str, float]:
        """gas micro-batches forward+backward; DeepSpeed steps the optimizer on the last.
        Nothing is read back from the device: the step's loss and grad norm go to
        self.stats (read at the next sync step). Returns host-side figures only."""
        lr = self.scheduler.get_last_lr()[0]  # the lr this step uses (a Python float)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        wait_s, tokens, counts = 0.0, 0, Counter()
        for _ in range(self.gas):
            t0 = time.perf_counter()
            batch = next(batches)
            counts.update(self.objective.step_counts(batch))  # on the CPU batch: no device sync
            batch, weight = self._piece(batch)
            batch = self._to_device(batch)
            wait_s += time.perf_counter() - t0
            tokens += batch_tokens(batch)
            loss = self.engine(**batch)["loss"]
            if weight != 1.0:  # this rank's share of the row's mean, times P
                loss = loss * weight
            self.engine.backward(loss)
            self.engine.step()
            loss_sum += loss.detach().double()
        self.stats.record(self.step + 1, loss_sum / self.gas, self.engine.get_global_grad_norm())
        return {"data_wait_s": wait_s, "tokens": tokens * self.denv.world_size, "lr": lr,
                "counts": counts}

    def sync(self, seconds_per_step: float) -> Synced:
        """Agree on loss, grad norm, stop flag and the non-finite watch (one collective)."""
        failed = self.saver is not None and self.saver.failed()
        synced = self.stats.sync(self.stop.requested, seconds_per_step, failed)
        t = self.cfg.train
        self.next_sync = self.step + next_interval(synced.seconds_per_step, t.sync_every_steps,
                                                   t.sync_every_seconds)
        return synced

    # ---- evaluation --------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Cross-entropy (no label smoothing) over the validation samples, all ranks."""
        cfg = self.cfg
        batches = list(eval_batches(self.src, cfg.train.micro_batch_size, self.sp.dp_rank,
                                    self.sp.dp_world, max_samples=cfg.eval.max_samples))
        count = torch.tensor([len(batches)], device=self.device)
        dist.all_reduce(count, op=dist.ReduceOp.MIN)  # ZeRO-3 needs equal forward counts
        self.engine.eval()
        totals = torch.zeros(2, dtype=torch.float64, device=self.device)  # (nats, tokens)
        for batch in batches[: int(count)]:
            batch = self._to_device(self._piece(batch)[0])  # each token counted on one rank
            logits = self.engine(**batch)["logits"]  # (B, T, V)
            targets = batch["targets"]  # (B, T)
            nats = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(),
                                   ignore_index=-100, reduction="sum")
            totals += torch.stack([nats.double(), (targets != -100).sum().double()])
        dist.all_reduce(totals)
        totals = totals.cpu()
        val_loss = (totals[0] / totals[1].clamp(min=1)).item()
        row = {"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50.0))}
        ctx = EvalContext(self.engine.module, self.src, cfg.train.micro_batch_size,
                          self.sp.dp_rank, self.sp.dp_world, self.device, cfg.eval,
                          zero3=cfg.deepspeed.zero_stage == 3)
        row.update(self.objective.eval_metrics(ctx, val_loss))  # still in eval mode
        self.engine.train()
        return row

    # ---- checkpoints -------------------------------------------------------------------

    def save(self) -> None:
        meta = CheckpointMeta(
            step=self.step, consumed_samples=self.consumed_samples(),
            data_fingerprint=self.src.fingerprint, data_folders=data_folders(self.src),
            param_shapes=self.shapes, world_size=self.denv.world_size,
            config=config_to_dict(self.cfg), wandb_run_id=self.metrics.run_id)
        if self.cfg.deepspeed.python_gc_every_steps:
            gc.collect()  # the full collection the periodic one leaves out, at a quiet moment
        t0 = time.perf_counter()
        if self.saver is not None:  # checkpoint.async: the last save commits first
            self._settle(self.saver.wait())
            outcome = self.saver.start(self.engine, self.ckpt_dir, meta, self.ckpt_bytes)
            outcome.blocking_ms = (time.perf_counter() - t0) * 1e3  # with the wait before
            log.info("step %d: checkpoint staged in %.0f ms, writing in the background",
                     self.step, outcome.blocking_ms)
            return
        tag_dir = ckpt.save(self.engine, self.ckpt_dir, meta, self.cfg.checkpoint.keep_last,
                            self.ckpt_bytes)
        ms = (time.perf_counter() - t0) * 1e3
        total = read_meta(tag_dir).total_bytes if self.rank0 else None
        self._settle(Outcome(self.step, tag_dir, ms, ms, total_bytes=total))

    def _settle(self, outcome: Outcome | None) -> None:
        """A save that ended: log it (metrics row on rank 0), or raise its failure (every rank
        alike: the outcome of a background save is the same on every rank)."""
        if outcome is None:
            return
        if outcome.error is not None:
            raise ckpt.CheckpointSaveError(outcome.error)
        self.ckpt_bytes = outcome.total_bytes or self.ckpt_bytes
        if getattr(self, "uploader", None) is not None:  # checkpoint.remote: in the background
            self.uploader.submit(outcome.tag_dir)
        self.metrics.log({"step": self.step, "checkpoint_step": outcome.step,
                          "checkpoint_blocking_ms": round(outcome.blocking_ms, 1),
                          "checkpoint_write_ms": round(outcome.write_ms, 1)})
        log.info("saved checkpoint %s in %.1f s (training held %.0f ms)", outcome.tag_dir,
                 outcome.write_ms / 1e3, outcome.blocking_ms)

    def wait_for_checkpoint(self) -> None:
        """Block until the background save in flight (if any) is committed; raise if it
        failed."""
        if self.saver is not None:
            self._settle(self.saver.wait())

    # ---- stop requests (pretrain/train/signals.py) -----------------------------------

    def _next_sync_step(self, step: int) -> int:
        """The first step >= `step` that syncs (where every rank reads the stop flag)."""
        cfg = self.cfg
        every = [cfg.logging.every_steps, cfg.checkpoint.every_steps, cfg.eval.every_steps]
        due = [-(-step // n) * n for n in every if n] + [cfg.train.max_steps]
        due += [cfg.train.stop_at_step] if cfg.train.stop_at_step else []
        return min([max(step, self.next_sync), *(d for d in due if d >= step)])

    def _stop_when(self) -> str:
        """"after step 7 (step 5 is in progress; about 3 min from now)": when the checkpoint
        of a stop request asked for now will be written. Read from the signal thread."""
        if self._loop is None:
            return "once start-up is done, after the first step"
        clock, step_t0 = self._loop
        step = self.step + 1  # in progress
        at = self._next_sync_step(step)
        known = clock.last is not None
        left = (at - step + 1) * clock.seconds_per_step() - (time.perf_counter() - step_t0)
        eta = f"about {_short(max(0.0, left))} from now" if known else \
            "the time of a step is not known yet"
        return f"after step {at} (step {step} is in progress; {eta})"

    def _stopped_unsaved(self) -> None:
        """A second Ctrl-C stops the rank at once (from the signal thread, the main thread
        may be inside a step): record the exit and release the folder, nothing more."""
        if self.rank0 and getattr(self, "started", False):
            events.record(self.cfg.run_dir, "exit", code=EXIT_INTERRUPTED, step=self.step,
                          error="stopped by a second Ctrl-C, without saving")
        self._release_lock()

    # ---- the loop ----------------------------------------------------------------------

    def _flops_per_token(self) -> int:
        """Training FLOPs per token, once per run (it builds the model on the meta device)."""
        return self.objective.flops_per_token(self.cfg.model)

    def _mfu(self, tokens_per_sec: float) -> float | None:
        if not use_gpu():
            return None  # no meaningful peak FLOP/s for a CPU
        from pretrain.model import mfu

        return mfu(tokens_per_sec, self.flops_per_token, n_gpus=self.denv.world_size)

    def _log(self, synced: Synced, out: dict[str, Any], interval: Interval) -> None:
        """One metrics row; speeds are means over the steps since the previous row."""
        tokens_per_sec = interval.tokens / max(interval.seconds, 1e-9)
        row = {"step": self.step, "loss": synced.loss, "lr": out["lr"],
               "grad_norm": synced.grad_norm, "tokens_per_sec": tokens_per_sec,
               "step_time_ms": interval.seconds / interval.steps * 1000,
               "data_wait_ms": interval.data_wait_s / interval.steps * 1000,
               "memory_mb": memory_mb(), "mfu": self._mfu(tokens_per_sec),
               "consumed_samples": self.consumed_samples(),
               "restart_count": self.restart_count, "time": time.time(),
               **self.memcheck.fields()}
        row.update(self.objective.log_fields(interval.counts))  # seq2seq: padding_fraction
        if self.remote is not None:  # s3:// data: cache_hit_rate, remote_bytes (all ranks)
            row.update(self.remote.metrics())
        self.metrics.log(row)
        log.info("step %d/%d loss %.4f lr %.3g tokens/s %.0f step %.0f ms", self.step,
                 self.cfg.train.max_steps, row["loss"], row["lr"], row["tokens_per_sec"],
                 row["step_time_ms"])

    def _eval(self) -> None:
        row = {"step": self.step, **self.evaluate()}
        self.metrics.log(row)
        log.info("step %d/%d val_loss %.4f val_ppl %.2f%s%s", self.step,
                 self.cfg.train.max_steps, row["val_loss"], row["val_ppl"],
                 f" val_bpb {row['val_bpb']:.4f}" if "val_bpb" in row else "",
                 f" val_bleu {row['val_bleu']:.2f}" if "val_bleu" in row else "")

    def _due(self) -> Due:
        """What this step must do; any of it makes the step a sync step."""
        cfg, step = self.cfg, self.step
        done = step == cfg.train.max_steps
        ev = cfg.eval
        return Due(log=step % cfg.logging.every_steps == 0 or done,
                   eval=bool(ev.every_steps and step % ev.every_steps == 0) or (done and ev.at_end),
                   save=step % cfg.checkpoint.every_steps == 0 or (done and cfg.checkpoint.save_at_end),
                   stop=step == cfg.train.stop_at_step)

    def _collect_garbage(self) -> None:
        """Python's automatic GC is off (deepspeed.python_gc_every_steps): collect the young
        generations here, at the same step on every rank — what torchtitan does (a full
        collection runs at checkpoint saves; it scans only what the run made after its start,
        freeze_heap)."""
        n = self.cfg.deepspeed.python_gc_every_steps
        if n and self.step % n == 0:
            gc.collect(1)

    def _batches(self):
        """The training batch iterator, made once and kept across run() calls."""
        if getattr(self, "_batch_iter", None) is None:
            t, d = self.cfg.train, self.cfg.data
            self._batch_iter = train_batches(  # keyed on the data-parallel rank
                self.src, t.global_batch_size, t.micro_batch_size, self.sp.dp_rank,
                self.sp.dp_world, consumed_samples=self.consumed_samples(),
                num_workers=d.num_workers, pin_memory=d.pin_memory)
            self._first_step = self.step
        return self._batch_iter

    def _after_sync(self, synced: Synced, out: dict[str, Any], due: Due,
                    interval: Interval) -> int | None:
        """Log, save, evaluate, stop — in that order; an exit code when the run must end."""
        if synced.problem:
            raise NonFiniteLoss(f"{synced.problem}; stopping without saving "
                                f"(last checkpoint is kept)")
        if synced.checkpoint_failed:  # every rank: wait for the outcome, raise its message
            self.wait_for_checkpoint()
        elif self.saver is not None:
            self._settle(self.saver.finished())  # log a background save that committed
        if due.log:
            self._log(synced, out, interval)
            interval.reset()
        stop = synced.stop or due.stop
        if stop or due.save:
            self.save()  # before evaluating: a failing evaluation must not cost the checkpoint
        if stop or self.step == self.cfg.train.max_steps:
            self.wait_for_checkpoint()  # a stop or the end leaves its checkpoint committed
        if due.eval and self.remote is not None and not self._eval_data_ready():
            if not (stop or due.save):
                self.save()
            self.wait_for_checkpoint()  # the exit-75 checkpoint is committed
            return EXIT_RESUME
        if due.eval:
            self._eval()
        if stop and self.step < self.cfg.train.max_steps:
            log.warning("stopped at step %d/%d on request; resume with the same command",
                        self.step, self.cfg.train.max_steps)
            return EXIT_RESUME
        return None

    def run(self, until: int | None = None) -> int | None:
        """Train to train.max_steps: EXIT_OK, or EXIT_RESUME when stopped on request.
        `until` (benchmarks) ends the call after that step with a sync and returns None;
        a later call continues where this one left off."""
        cfg, max_steps = self.cfg, self.cfg.train.max_steps
        end = max_steps if until is None else min(until, max_steps)
        batches = self._batches()
        log.info("training %s params, %d ranks, %d grad-accum steps, ZeRO-%d, %s, steps %d→%d",
                 f"{self.n_params:,}", self.denv.world_size, self.gas, cfg.deepspeed.zero_stage,
                 cfg.precision, self.step, end)
        progress = Progress(max_steps, self.step, self.rank0 and cfg.logging.progress_bar,
                            cfg.logging.progress_every_seconds)
        try:
            return self._steps(batches, end, progress)
        finally:
            progress.close()

    def _steps(self, batches, end: int, progress: Progress) -> int | None:
        """The step loop of run()."""
        interval, clock = Interval(), SyncClock()
        self.memcheck.training_starts()
        while self.step < end:
            t0 = time.perf_counter()
            self._loop = (clock, t0)
            data_wait_s = 0.0
            if self.remote is not None:  # s3:// data: every rank has its step's shards?
                agreed = self.remote.before_step(batches, self.step, self._first_step, self.gas)
                if agreed.outage:
                    return self._stop_on_outage(agreed, clock, interval)
                data_wait_s = agreed.wait_s
            out = self.train_step(batches)
            out["data_wait_s"] += data_wait_s
            self.step += 1
            self.memcheck.step_done()
            self._collect_garbage()
            due, synced = self._due(), None
            if due.any() or self.step >= self.next_sync or self.step == end:
                synced = self.sync(clock.seconds_per_step())
            interval.add(time.perf_counter() - t0, out)
            clock.step_done(synced is not None)
            progress.update(self.step)
            if synced is not None:
                code = self._after_sync(synced, out, due, interval)
                clock.restart()  # eval and save are not step time
                if code is not None:
                    return code
        return EXIT_OK if self.step == self.cfg.train.max_steps else None

    def _stop_on_outage(self, agreed, clock: SyncClock, interval: Interval) -> int:
        """Object storage failed longer than data.remote_timeout on some rank: every rank
        saves at this step boundary and the run exits 75 (a requeue resumes it exactly)."""
        log.warning("object storage unavailable for data.remote_timeout (%.0f s) on some rank"
                    "%s; saving a checkpoint at step %d and exiting %d to be resumed",
                    self.cfg.data.remote_timeout,
                    f" (this rank: {agreed.error})" if agreed.error else "", self.step,
                    EXIT_RESUME)
        synced = self.sync(clock.seconds_per_step())
        code = self._after_sync(synced, {}, Due(log=False, eval=False, save=False, stop=True),
                                interval)
        return EXIT_RESUME if code is None else code

    def _eval_data_ready(self) -> bool:
        """s3:// data: every rank has its validation shards (else: outage, logged)."""
        cfg = self.cfg
        indices = eval_indices(self.src, cfg.train.micro_batch_size, self.denv.rank,
                               self.denv.world_size, cfg.eval.max_samples)
        agreed = self.remote.before_eval(indices)
        if agreed.outage:
            log.warning("object storage unavailable for data.remote_timeout during evaluation"
                        "%s; stopping at step %d with exit %d to be resumed",
                        f" (this rank: {agreed.error})" if agreed.error else "", self.step,
                        EXIT_RESUME)
        return not agreed.outage

    def close(self, code: int | None = None, error: str | None = None) -> None:
        """Close the metrics, record the exit (rank 0: `code` as the process will return it,
        None when the caller gives none) and release the run folder."""
        try:
            self._close_saver()
            self._close_uploads()
            self.memcheck.stop()
            batches = getattr(self, "_batch_iter", None)
            if hasattr(batches, "close"):
                batches.close()  # the read-ahead thread of s3:// data
            if self.src.cache is not None:
                self.src.cache.close()
            self.metrics.close()
        finally:
            try:
                if self.rank0 and getattr(self, "started", False) and code is not None:
                    events.record(self.cfg.run_dir, "exit", code=code, step=self.step,
                                  error=error)
            finally:
                self._release_lock()

    def _close_saver(self) -> None:
        """Wait for the background save in flight (also after an error), stop the writer."""
        saver, self.saver = getattr(self, "saver", None), None
        if saver is None:
            return
        try:
            outcome = saver.close()
            if outcome is not None and outcome.error is not None:
                if self.rank0:
                    log.error("%s", outcome.error)
            elif outcome is not None:
                self._settle(outcome)
        except Exception:  # noqa: BLE001 - closing must go on
            log.exception("closing the background checkpoint writer failed")

    def _close_uploads(self) -> None:
        """checkpoint.remote: wait for the uploads in flight (at most remote_timeout; a
        warning names what is not uploaded)."""
        uploader, self.uploader = getattr(self, "uploader", None), None
        if uploader is not None:
            uploader.close()

    def _release_lock(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None
