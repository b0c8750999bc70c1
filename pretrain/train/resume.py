"""What a resumed run may change, and making the changes it keeps take effect (design §4, §10).

Refused (the message names each change): the model's parameter shapes, the data (another
fingerprint: the changed folder paths, weights or folder contents are named), what decides which
samples come in which order (seed, objective, lengths, noise, shuffle and its blocks), the
precision, the optimizer (offload or not), the parametrization (muP's keys), and a ZeRO stage
change the universal checkpoint cannot carry
(reshard.through_universal; another number of ranks resumes at any stage). A change of
global batch is kept when the samples consumed so far are a whole number of the new batches (the
loader resumes at an exact step of the new batch), refused otherwise. Everything else (lr,
schedule, max_steps, betas, clipping, eval, logging, ...) is kept and logged as a warning, key
by key, old → new; the optimizer and the lr schedule restored from the checkpoint are then set
to the new values.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pretrain.configlib import config_changes
from pretrain.model.mup import GroupSpec, group_specs
from pretrain.objectives import exactness_keys
from pretrain.train.checkpoint import CheckpointError
from pretrain.train.checkpoint_meta import CheckpointMeta, DataFolderRecord
from pretrain.train.config import RunConfig, config_to_dict
from pretrain.train.reshard import through_universal

log = logging.getLogger(__name__)

# Keys that decide which sample comes at which position (the objectives' own: each names them,
# pretrain/objectives), or the saved optimizer layout.
EXACTNESS_KEYS = ("seed", "precision", "data.objective", *exactness_keys(), "data.shuffle",
                  "data.shuffle_block_shards")
# what a checkpoint written before a key existed ran with
OLD_DEFAULTS = {"data.shuffle_block_shards": 0}


def data_folders(src) -> list[DataFolderRecord]:
    """The run's shard folders with their normalised weights and manifest fingerprints."""
    return [DataFolderRecord(path=str(f.folder), weight=w, fingerprint=f.fingerprint)
            for f, w in zip(src.folders, src.weights)]


def _data_problems(meta: CheckpointMeta, fingerprint: str,
                   folders: list[DataFolderRecord]) -> list[str]:
    if meta.data_fingerprint == fingerprint:
        return []
    old = {f.path: f for f in meta.data_folders}
    new = {f.path: f for f in folders}
    out = [f"data folder {p} was in the checkpoint's mixture, not in this run's"
           for p in old if p not in new]
    out += [f"data folder {p} is new (not in the checkpoint's mixture)"
            for p in new if p not in old]
    for p in sorted(set(old) & set(new)):
        if old[p].fingerprint != new[p].fingerprint:
            out.append(f"data folder {p}: its contents changed (manifest fingerprint "
                       f"{old[p].fingerprint[:12]}… → {new[p].fingerprint[:12]}…)")
        if abs(old[p].weight - new[p].weight) > 1e-12:
            out.append(f"data folder {p}: weight {old[p].weight:.6g} → {new[p].weight:.6g}")
    if not out:  # a checkpoint from before data_folders was recorded
        out.append(f"data fingerprint: checkpoint {meta.data_fingerprint[:16]}…, "
                   f"data {fingerprint[:16]}…")
    return out


def _partition_problems(meta: CheckpointMeta, zero_stage: int) -> list[str]:
    """Another number of ranks is fine at any stage (ZeRO-0 as saved, ZeRO >= 1 through the
    universal checkpoint); a stage change only as reshard.through_universal allows."""
    old = meta.zero_stage
    if old == zero_stage or through_universal(old, zero_stage):
        return []
    return [f"deepspeed.zero_stage: checkpoint {old}, config {zero_stage} (ZeRO-0 keeps the "
            "optimizer state unpartitioned in the model-states file, and DeepSpeed's universal "
            "checkpoint neither reads nor loads that layout: a stage changes only among 1, 2 "
            f"and 3; resume at ZeRO-{old} — on any number of ranks)"]


def _shape_problems(old: dict[str, list[int]], new: dict[str, list[int]]) -> list[str]:
    out = [f"parameter {n}: checkpoint {old.get(n)}, config {new.get(n)}"
           for n in sorted(set(old) | set(new)) if old.get(n) != new.get(n)]
    if len(out) > 5:
        out = out[:5] + [f"... and {len(out) - 5} more parameters"]
    return out


def _batch_problem(meta: CheckpointMeta, gbs: int) -> list[str]:
    if meta.consumed_samples % gbs:
        return [f"train.global_batch_size: {meta.config['train']['global_batch_size']} → {gbs}, "
                f"but the checkpoint consumed {meta.consumed_samples} samples, not a whole number "
                f"of {gbs}-sample batches (the loader resumes only at a step boundary of the new "
                "batch; pick a batch that divides it)"]
    return []


# What muP changes (pretrain/model/mup.py): the optimizer's param groups and what the weights
# compute. Under standard on both sides mup_base_width is unused: a change there is harmless.
MUP_KEYS = ("model.parametrization", "model.mup_base_width", "model.mup_base_head_dim")


def _mup_problems(changes: list[tuple[str, Any, Any]], old_model: dict[str, Any],
                  cfg: RunConfig) -> list[str]:
    if "mup" not in (old_model.get("parametrization", "standard"), cfg.model.parametrization):
        return []
    return [f"{k}: {a!r} → {b!r} (muP: the optimizer's param groups, their lr and weight "
            "decay, and what the weights compute depend on it)"
            for k, a, b in changes if k in MUP_KEYS]


def check_resume(meta: CheckpointMeta, cfg: RunConfig, shapes: dict[str, list[int]],
                 fingerprint: str, folders: list[DataFolderRecord],
                 tag_dir: Path) -> list[tuple[str, Any, Any]]:
    """Raise CheckpointError naming every change that breaks the resume; return the changed
    config keys that are kept (old, new) so the caller can warn."""
    new = config_to_dict(cfg)
    changes = [(k, OLD_DEFAULTS[k] if a == "<unset>" and k in OLD_DEFAULTS else a, b)
               for k, a, b in config_changes(meta.config, new)]
    changes = [(k, a, b) for k, a, b in changes if a != b]
    changed = {k for k, _, _ in changes}
    problems = _partition_problems(meta, cfg.deepspeed.zero_stage)
    problems += _shape_problems(meta.param_shapes, shapes)
    problems += _data_problems(meta, fingerprint, folders)
    problems += _mup_problems(changes, meta.config.get("model", {}), cfg)
    problems += [f"{k}: {a!r} → {b!r} (decides which samples come in which order)"
                 for k, a, b in changes if k in EXACTNESS_KEYS and k != "precision"]
    if "precision" in changed:
        problems.append(f"precision: checkpoint {meta.config['precision']}, config "
                        f"{cfg.precision} (the optimizer state is laid out per precision)")
    if "deepspeed.offload_optimizer" in changed:
        problems.append(f"deepspeed.offload_optimizer: checkpoint "
                        f"{meta.config['deepspeed']['offload_optimizer']}, config "
                        f"{cfg.deepspeed.offload_optimizer} (another optimizer: torch AdamW vs "
                        "DeepSpeedCPUAdam, whose saved state does not carry over)")
    if "train.global_batch_size" in changed:
        problems += _batch_problem(meta, cfg.train.global_batch_size)
    if problems:
        err = CheckpointError(f"cannot resume from {tag_dir}: the run changed:\n  - "
                              + "\n  - ".join(problems)
                              + "\nNothing in the run folder was changed. Use a new run_dir "
                              "(or resume=never) to start over.")
        err.all_ranks = True
        raise err
    return changes


def warn_changes(changes: list[tuple[str, Any, Any]], tag_dir: Path,
                 meta: CheckpointMeta | None = None, cfg: RunConfig | None = None) -> None:
    """The kept changes, key by key, and the jump of the learning rate they make (if any)."""
    from pretrain.train.schedule import lr_jump

    jump = lr_jump(meta.config, cfg, meta.step) if meta is not None and cfg is not None else None
    if changes:
        log.warning("resuming from %s with a changed config (the new values apply from the "
                    "next step):\n%s%s", tag_dir,
                    "\n".join(f"  - {k}: {a!r} → {b!r}" for k, a, b in changes),
                    f"\n  {jump}" if jump else "")


def apply_hyperparameters(scheduler, cfg: RunConfig) -> None:
    """After load: DeepSpeed restored the optimizer's param groups (lr, betas, eps, weight decay)
    and the scheduler's base lr and lr function from the checkpoint; set them to this run's
    config, so that a changed value takes effect from the next step. With an unchanged config
    this writes back the same values (bit for bit). Groups are keyed by name
    (pretrain.model.mup.group_specs): each gets its spec's lr factor and weight decay."""
    from pretrain.train.schedule import retarget

    o = cfg.optim
    optimizer = scheduler.optimizer  # the optimizer that steps (inside ZeRO's wrapper too)
    specs = group_specs(cfg.model, o.weight_decay)
    restore_group_names(optimizer.param_groups, specs)
    by_name = {s.name: s for s in specs}
    for g in optimizer.param_groups:
        spec = by_name[g["name"]]
        g["betas"], g["eps"] = (o.beta1, o.beta2), o.eps
        g["weight_decay"], g["lr_scale"] = spec.weight_decay, spec.lr_scale
    retarget(scheduler, cfg.schedule, cfg.train.max_steps, o.lr)


def restore_group_names(groups: list[dict], specs: list[GroupSpec]) -> None:
    """Make every group carry its spec's name. The engine keeps the groups in the order it was
    built with, but a load may leave names missing (a checkpoint from before groups were named)
    or all alike (DeepSpeed's ZeRO-3 universal load gives every group the first one's
    settings): then they are named by that order."""
    names = [s.name for s in specs]
    if len(groups) != len(specs):
        raise CheckpointError(f"the optimizer has {len(groups)} param groups, this run's model "
                              f"needs {len(specs)} ({', '.join(names)})")
    if sorted(str(g.get("name")) for g in groups) != sorted(names):
        for g, name in zip(groups, names):
            g["name"] = name
