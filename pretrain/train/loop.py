"""One rank of a training run: set-up, resume, the step loop, eval, checkpoints, stops."""

from __future__ import annotations

import logging
import math
import os
import resource
import signal
import time
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from pretrain.configlib import dump_yaml
from pretrain.data import eval_batches, open_data, train_batches
from pretrain.exit_codes import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, EXIT_RESUME  # noqa: F401
from pretrain.model import build_model
from pretrain.train import checkpoint as ckpt
from pretrain.train.config import RunConfig, config_to_dict
from pretrain.train.engine import DistEnv, grad_accum_steps, initialize, use_gpu
from pretrain.train.metrics import Metrics
from pretrain.train.preflight import fill_vocab
from pretrain.train.schedule import lr_multiplier

log = logging.getLogger("pretrain.train")

EXIT_DONE, EXIT_RESUME_ME = EXIT_OK, EXIT_RESUME


class StopFlag:
    """SIGUSR1/SIGTERM set a local flag; ranks agree on it at the next step boundary."""

    def __init__(self):
        self.requested = False
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(sig, self._handle)
            # Restart interrupted system calls: a signal must not break a gloo/NCCL socket
            # operation in flight; the flag is read at the next step boundary.
            signal.siginterrupt(sig, False)

    def _handle(self, signum, _frame):
        self.requested = True
        log.warning("received %s: will save and stop at the end of this step",
                    signal.Signals(signum).name)


class NonFiniteLoss(RuntimeError):
    pass


def memory_mb() -> float:
    if use_gpu():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def batch_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Tokens in `input_ids` (the source side for encoder-decoders, as flops_per_token counts)."""
    return batch["input_ids"].numel()


def padding_counts(batch: dict[str, torch.Tensor]) -> tuple[int, int]:
    """seq2seq: (padded positions, all positions) of a CPU batch, source and target together
    (counted before the copy to the device, so no host sync)."""
    mask, targets = batch["attention_mask"], batch["targets"]
    pad = int((~mask).sum()) + int((targets == -100).sum())
    return pad, mask.numel() + targets.numel()


class Trainer:
    def __init__(self, cfg: RunConfig, denv: DistEnv, device: torch.device,
                 stop: StopFlag | None = None):
        self.stop = stop or StopFlag()
        self.denv, self.device = denv, device
        self.rank0 = denv.rank == 0
        self.src = open_data(cfg.data, cfg.seed)
        self.cfg = cfg = fill_vocab(cfg, self.src.vocab_size)
        self.ckpt_dir = cfg.run_dir / "checkpoints"
        self.gas = grad_accum_steps(cfg, denv.world_size)
        self.seq2seq = cfg.data.objective == "seq2seq"
        if self.seq2seq and self.rank0:
            log.info("seq2seq: %s; longer pairs are skipped (data.input_length %d, "
                     "data.target_length %d, EOS included)",
                     ", ".join(f"{split} {self.src.num_samples(split):,} pairs used, "
                               f"{n:,} skipped" for split, n in self.src.skipped_pairs.items()),
                     cfg.data.input_length, cfg.data.target_length)
        if self.rank0:
            cfg.run_dir.mkdir(parents=True, exist_ok=True)
            (cfg.run_dir / "config.yaml").write_text(dump_yaml(config_to_dict(cfg)))
        self.resume_tag = ckpt.find_resume_tag(self.ckpt_dir) if cfg.resume == "auto" else None
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        model = build_model(cfg.model)
        self.shapes = ckpt.param_shapes(model)
        self.n_params = sum(p.numel() for p in model.parameters())
        if self.resume_tag:
            ckpt.check_compatible(ckpt.read_meta(self.ckpt_dir / self.resume_tag), self.shapes,
                                  self.src.fingerprint, self.ckpt_dir / self.resume_tag,
                                  denv.world_size, cfg.deepspeed.zero_stage)
        torch.manual_seed(cfg.seed + 1 + denv.rank)  # dropout differs between ranks
        self.engine, self.scheduler = initialize(model, cfg, denv.world_size)
        self.step = 0
        if self.resume_tag:
            client = ckpt.load(self.engine, self.ckpt_dir, self.resume_tag)
            self.step = int(client["step"])
            log.info("resumed from %s at step %d", self.ckpt_dir / self.resume_tag, self.step)
        self.restart_count = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
        self.metrics = Metrics(cfg.run_dir, self.rank0, cfg.logging.wandb, config_to_dict(cfg),
                               self.step)

    # ---- one optimizer step ------------------------------------------------------------

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def train_step(self, batches) -> dict[str, float]:
        """gas micro-batches forward+backward; DeepSpeed steps the optimizer on the last."""
        # Kept on the device: no host sync per micro-batch, and NCCL reduces only GPU tensors.
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        wait_s, tokens, pad, positions = 0.0, 0, 0, 0
        for _ in range(self.gas):
            t0 = time.perf_counter()
            batch = next(batches)
            if self.seq2seq:
                pad, positions = (a + b for a, b in zip((pad, positions), padding_counts(batch)))
            batch = self._to_device(batch)
            wait_s += time.perf_counter() - t0
            tokens += batch_tokens(batch)
            loss = self.engine(**batch)["loss"]
            self.engine.backward(loss)
            self.engine.step()
            loss_sum += loss.detach().double()
        # One all-reduce per step: mean loss, the stop flag (does any rank want to stop?) and
        # the padding counts (seq2seq).
        host = torch.tensor([float(self.stop.requested), pad, positions], dtype=torch.float64,
                            device=self.device)
        stats = torch.cat([(loss_sum / self.gas)[None], host])
        dist.all_reduce(stats)
        stats = stats.cpu()
        grad_norm = self.engine.get_global_grad_norm()
        return {"loss": stats[0].item() / self.denv.world_size, "stop": stats[1].item() > 0,
                "data_wait_s": wait_s, "tokens": tokens * self.denv.world_size,
                "grad_norm": None if grad_norm is None else float(grad_norm),
                "padding_fraction": stats[2].item() / stats[3].item() if self.seq2seq else None}

    # ---- evaluation --------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Cross-entropy (no label smoothing) over the validation samples, all ranks."""
        cfg = self.cfg
        batches = list(eval_batches(self.src, cfg.train.micro_batch_size, self.denv.rank,
                                    self.denv.world_size, max_samples=cfg.eval.max_samples))
        count = torch.tensor([len(batches)], device=self.device)
        dist.all_reduce(count, op=dist.ReduceOp.MIN)  # ZeRO-3 needs equal forward counts
        self.engine.eval()
        totals = torch.zeros(2, dtype=torch.float64, device=self.device)  # (nats, tokens)
        for batch in batches[: int(count)]:
            batch = self._to_device(batch)
            logits = self.engine(**batch)["logits"]  # (B, T, V)
            targets = batch["targets"]  # (B, T)
            nats = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(),
                                   ignore_index=-100, reduction="sum")
            totals += torch.stack([nats.double(), (targets != -100).sum().double()])
        bleu = self._val_bleu() if self.seq2seq and cfg.eval.bleu_samples else None
        self.engine.train()
        dist.all_reduce(totals)
        totals = totals.cpu()
        val_loss = (totals[0] / totals[1].clamp(min=1)).item()
        row = {"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50.0))}
        if cfg.data.objective == "clm":
            row["val_bpb"] = val_loss / math.log(2) / self.src.bytes_per_token("val")
        if bleu is not None:
            row["val_bleu"] = bleu
        return row

    def _val_bleu(self) -> float | None:
        """sacreBLEU of the first eval.bleu_samples val pairs (rank 0; None elsewhere)."""
        from pretrain.train.bleu import val_bleu

        cfg = self.cfg
        return val_bleu(self.engine.module, self.src, cfg.train.micro_batch_size,
                        self.denv.rank, self.denv.world_size, self.device,
                        cfg.eval.bleu_samples, cfg.eval.bleu_beam, cfg.data.target_length,
                        zero3=cfg.deepspeed.zero_stage == 3)

    # ---- checkpoints -------------------------------------------------------------------

    def save(self) -> None:
        meta = {"step": self.step,
                "consumed_samples": self.step * self.cfg.train.global_batch_size,
                "data_fingerprint": self.src.fingerprint, "param_shapes": self.shapes,
                "world_size": self.denv.world_size, "config": config_to_dict(self.cfg),
                "wandb_run_id": self.metrics.run_id}
        t0 = time.perf_counter()
        tag_dir = ckpt.save(self.engine, self.ckpt_dir, self.step, meta,
                            self.cfg.checkpoint.keep_last)
        log.info("saved checkpoint %s in %.1f s", tag_dir, time.perf_counter() - t0)

    # ---- the loop ----------------------------------------------------------------------

    def _log_row(self, out: dict[str, Any], step_s: float, since_log: tuple[float, int]) -> dict:
        seconds, tokens = since_log
        tokens_per_sec = tokens / max(seconds, 1e-9)
        row = {"step": self.step, "loss": out["loss"],
               "lr": self.cfg.optim.lr * lr_multiplier(self.cfg.schedule, self.step - 1,
                                                       self.cfg.train.max_steps),
               "grad_norm": out["grad_norm"], "tokens_per_sec": tokens_per_sec,
               "step_time_ms": step_s * 1000, "data_wait_ms": out["data_wait_s"] * 1000,
               "memory_mb": memory_mb(), "mfu": self._mfu(tokens_per_sec),
               "consumed_samples": self.step * self.cfg.train.global_batch_size,
               "restart_count": self.restart_count, "time": time.time()}
        if self.seq2seq:  # padded share of the source + target positions of the step, all ranks
            row["padding_fraction"] = out["padding_fraction"]
        return row

    def _mfu(self, tokens_per_sec: float) -> float | None:
        if not use_gpu():
            return None  # no meaningful peak FLOP/s for a CPU
        from pretrain.model import flops_per_token, mfu

        d = self.cfg.data
        seq = d.seq_len if d.objective == "clm" else d.input_length
        fpt = flops_per_token(self.cfg.model, seq, d.target_length)
        return mfu(tokens_per_sec, fpt, n_gpus=self.denv.world_size)

    def _maybe_eval(self, at_end: bool) -> None:
        ev = self.cfg.eval
        due = ev.every_steps and self.step % ev.every_steps == 0
        if due or (at_end and ev.at_end):
            row = {"step": self.step, **self.evaluate()}
            self.metrics.log(row)
            log.info("step %d/%d val_loss %.4f val_ppl %.2f%s%s", self.step,
                     self.cfg.train.max_steps, row["val_loss"], row["val_ppl"],
                     f" val_bpb {row['val_bpb']:.4f}" if "val_bpb" in row else "",
                     f" val_bleu {row['val_bleu']:.2f}" if "val_bleu" in row else "")

    def run(self) -> int:
        cfg, max_steps = self.cfg, self.cfg.train.max_steps
        batches = train_batches(self.src, cfg.train.global_batch_size, cfg.train.micro_batch_size,
                                self.denv.rank, self.denv.world_size,
                                consumed_samples=self.step * cfg.train.global_batch_size,
                                num_workers=cfg.data.num_workers, pin_memory=cfg.data.pin_memory)
        log.info("training %s params, %d ranks, %d grad-accum steps, ZeRO-%d, %s, steps %d→%d",
                 f"{self.n_params:,}", self.denv.world_size, self.gas, cfg.deepspeed.zero_stage,
                 cfg.precision, self.step, max_steps)
        bar = tqdm(total=max_steps, initial=self.step, desc="train", unit="step",
                   disable=not (self.rank0 and cfg.logging.progress_bar), mininterval=2)
        since_log = (0.0, 0)
        while self.step < max_steps:
            t0 = time.perf_counter()
            out = self.train_step(batches)
            self.step += 1
            step_s = time.perf_counter() - t0
            since_log = (since_log[0] + step_s, since_log[1] + out["tokens"])
            bar.update(1)
            if not math.isfinite(out["loss"]):
                raise NonFiniteLoss(f"non-finite loss ({out['loss']}) at step {self.step}; "
                                    f"stopping without saving (last checkpoint is kept)")
            if self.step % cfg.logging.every_steps == 0 or self.step == max_steps:
                row = self._log_row(out, step_s, since_log)
                since_log = (0.0, 0)
                self.metrics.log(row)
                log.info("step %d/%d loss %.4f lr %.3g tokens/s %.0f step %.0f ms",
                         self.step, max_steps, row["loss"], row["lr"], row["tokens_per_sec"],
                         row["step_time_ms"])
            self._maybe_eval(at_end=self.step == max_steps)
            done = self.step == max_steps
            if self.step == cfg.train.stop_at_step:
                out["stop"] = True
            if (out["stop"] or self.step % cfg.checkpoint.every_steps == 0
                    or (done and cfg.checkpoint.save_at_end)):
                self.save()
            if out["stop"] and not done:
                bar.close()
                log.warning("stopped at step %d/%d on request; resume with the same command",
                            self.step, max_steps)
                return EXIT_RESUME_ME
        bar.close()
        return EXIT_DONE

    def close(self) -> None:
        self.metrics.close()
