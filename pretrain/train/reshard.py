"""Resuming a ZeRO checkpoint on another number of ranks (or another ZeRO stage) through
DeepSpeed's universal checkpoint (docs/design.md §4, §10).

A ZeRO >= 1 checkpoint holds the fp32 master weights and Adam's moments as one flat partition
per rank; DeepSpeed cannot re-split them on load. `deepspeed.checkpoint.ds_to_universal` turns
them into one folder per parameter (`zero/NAME/{fp32,exp_avg,exp_avg_sq,step}.pt`, whole
tensors) that any rank count loads (`checkpoint.load_universal` in the DeepSpeed config); the
folder is completed so that it loads at any ZeRO stage 1-3 (_loadable_at_every_stage).

    checkpoints/step_00000400/             the checkpoint as written by W ranks (never changed)
    checkpoints/step_00000400_universal/   the same state, per parameter, + its own meta.json

A copy belongs to one writing of its `step_N`: its meta.json records the sha256 of the
original's meta.json (`source_meta_sha256`), and a copy whose record differs (step_N was written
again: a run started over with resume=never, a rollback that deleted step_N) is converted again,
never loaded. The trainer also removes the copy whenever it writes step_N and every copy when a
run starts over (checkpoint.drop_universal_copies).

The conversion runs once per checkpoint, in one process (rank 0 of the resuming run, or
`arrowtrain export RUNDIR --format universal` offline), into a temp folder
`.step_00000400_universal.tmpPID/` that is renamed into place only once every file is written
and hashed into its `meta.json` — a kill during the conversion leaves the run folder as it was
(the leftover temp folder is removed by the next conversion). Every `torch.load` of the
conversion and of the universal load is weights-only (`safeload`).

Per-rank RNG streams (`rng_rank{r}.pt`) cannot be mapped onto another number of ranks: a
re-sharded resume re-seeds every rank from (seed, step, rank) instead (`checkpoint.reseed`), so
it is repeatable, but its dropout masks differ from an uninterrupted run's.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
from datetime import timedelta
from pathlib import Path

from data_tools.atomic import fsync_path, is_temp_name, temp_name, write_atomic
from pretrain.train.checkpoint import CheckpointError, FileProblem, check_files, file_record
from pretrain.train.checkpoint_meta import (
    META,
    META_FORMAT,
    UNIVERSAL_SUFFIX,
    CheckpointMeta,
    meta_problem,
    meta_sha256,
)
from pretrain.train.distenv import deepspeed_output, import_deepspeed
from pretrain.train.safeload import UnsafeCheckpointFile, weights_only_loading

log = logging.getLogger(__name__)

CONVERT_TIMEOUT_S = 4 * 3600  # how long the other ranks wait for rank 0's conversion

# The model-states file a ZeRO-3 engine looks for, and the one stages 0-2 look for: a universal
# folder holds both names (one file, hard-linked) so that it loads at either kind of stage.
_MODEL_STATES = ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt")


def universal_tag(tag: str) -> str:
    return tag + UNIVERSAL_SUFFIX


def describe(meta: CheckpointMeta, world_size: int, zero_stage: int) -> str:
    """"re-shard from W to W' ranks" (and the stage change, if any)."""
    text = f"re-shard from {meta.world_size} to {world_size} ranks"
    if meta.zero_stage != zero_stage:
        text += f", ZeRO-{meta.zero_stage} to ZeRO-{zero_stage}"
    return text


def through_universal(saved_stage: int, zero_stage: int) -> bool:
    """The ZeRO stage rule, in one place: a checkpoint saved at ZeRO >= 1 can be resumed at any
    ZeRO >= 1 stage, on any number of ranks, through the universal checkpoint. ZeRO-0 keeps the
    whole optimizer state on every rank, unpartitioned in the model-states file: it loads on any
    rank count as it is, and the universal checkpoint neither reads nor loads that layout (so
    a stage change to or from 0 is refused: resume.py)."""
    return min(saved_stage, zero_stage) >= 1


def needs_universal(meta: CheckpointMeta, world_size: int, zero_stage: int) -> bool:
    """A ZeRO >= 1 checkpoint resumed on other ranks or at another ZeRO >= 1 stage."""
    return through_universal(meta.zero_stage, zero_stage) and (
        meta.world_size != world_size or meta.zero_stage != zero_stage)


def untie_adam_steps(optimizer) -> None:
    """After a universal load at ZeRO-3: DeepSpeed 0.19.8 gives every sub-group's Adam state
    the *same* `step` tensor object, and torch's AdamW increments each state's step in place —
    shared, it would count once per sub-group per step (wrong bias correction: losses drift
    ~1e-3 within 3 steps). Give each state its own copy."""
    import torch

    seen: set[int] = set()
    for state in optimizer.state.values():
        step = state.get("step")
        if torch.is_tensor(step):
            if id(step) in seen:
                state["step"] = step.clone()
            seen.add(id(step))


# ---- the conversion (one process) ---------------------------------------------------------

def _remove_leftovers(ckpt_dir: Path, name: str) -> None:
    """Temp folders of conversions that were killed (their pid is gone on this host)."""
    for p in ckpt_dir.glob(f".{name}.tmp*"):
        if not is_temp_name(p.name):
            continue
        pid = int(p.name.rsplit(".tmp", 1)[1])
        try:
            os.kill(pid, 0)
            if pid != os.getpid():
                continue  # a live conversion (offline export beside a run): leave it
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # someone else's live process
        log.info("removing %s (left by a conversion that was interrupted)", p)
        shutil.rmtree(p, ignore_errors=True)


def _link_model_states(folder: Path) -> None:
    """Give the model-states file both names DeepSpeed looks for (stages 0-2 and 3)."""
    present = [n for n in _MODEL_STATES if (folder / n).is_file()]
    for name in _MODEL_STATES:
        if present and not (folder / name).exists():
            try:
                os.link(folder / present[0], folder / name)
            except OSError:  # a filesystem without hard links
                shutil.copy2(folder / present[0], folder / name)


def _loadable_at_every_stage(folder: Path) -> None:
    """ds_to_universal writes a ZeRO-1/2 and a ZeRO-3 checkpoint in two layouts that DeepSpeed
    0.19.8 loads only at their own kind of stage (ZeRO-3 reads `optimizer_state_dict` and bare
    tensors; ZeRO-1/2 reads `ds_version`, `{"param": tensor}` and a `step.pt` per parameter).
    Give the folder both: then it resumes at any stage 1-3. (A ZeRO-3 source's copy of rank 0's
    flat partitions in optimizer_state.pt is dropped: nothing loads it.)"""
    import torch

    deepspeed = import_deepspeed()
    from deepspeed.checkpoint import constants as c

    zero = folder / "zero"
    path = zero / "optimizer_state.pt"
    sd = torch.load(path, map_location="cpu", weights_only=True)
    nested = sd.pop(c.OPTIMIZER_STATE_DICT, None)
    sd.pop(c.FP32_FLAT_GROUPS, None)
    step = nested["state"][0]["step"] if nested is not None else \
        torch.load(next(zero.glob("*/step.pt")), map_location="cpu", weights_only=True)
    sd.setdefault(c.DS_VERSION, deepspeed.__version__)
    sd[c.OPTIMIZER_STATE_DICT] = {"state": {0: {"step": step}},
                                  c.PARAM_GROUPS: sd[c.PARAM_GROUPS]}
    torch.save(sd, path)
    # (A tied name, e.g. lm_head.weight, gets an fp32.pt alone from the module's state.)
    for param_dir in sorted(p for p in zero.iterdir() if p.is_dir()):
        for f in (param_dir / f"{key}.pt" for key in ("fp32", "exp_avg", "exp_avg_sq")):
            value = torch.load(f, map_location="cpu", weights_only=True) if f.is_file() else {}
            if torch.is_tensor(value):
                torch.save({c.PARAM: value}, f)
        if (param_dir / "exp_avg.pt").is_file() and not (param_dir / "step.pt").exists():
            torch.save(step.clone() if torch.is_tensor(step) else step, param_dir / "step.pt")


def _run_ds_to_universal(src: Path, out: Path) -> None:
    os.environ.setdefault("DS_ACCELERATOR", "cpu")  # the conversion runs on the CPU
    import_deepspeed()
    from deepspeed.checkpoint import ds_to_universal

    args = argparse.Namespace(
        input_folder=str(src), output_folder=str(out),
        num_extract_workers=1, num_merge_workers=1,  # in this process: weights-only applies
        keep_temp_folder=False, strict=True,
        inject_missing_state=True)  # our checkpoints carry no `universal_checkpoint_info`
    # DeepSpeed prints its steps and bars: kept out of stdout, and out of the log unless
    # DeepSpeed's INFO is asked for (logging.deepspeed_level, ARROWTRAIN_DEEPSPEED_LOG).
    with weights_only_loading(), deepspeed_output():
        ds_to_universal.main(args)


def existing(ckpt_dir: Path, tag: str) -> tuple[CheckpointMeta | None, list[FileProblem]]:
    """The universal folder of `tag` if it is there: (meta, problems) after checking every file
    (size, sha256, weights-only unpickle); (None, []) when there is none."""
    out = ckpt_dir / universal_tag(tag)
    if not out.is_dir():
        return None, []
    meta, why = meta_problem(out)
    if meta is None:
        return None, [FileProblem(file=META, reason=why)]
    present = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name != META}
    return meta, check_files(out, meta, sorted(present | set(meta.files)))


def stale_problem(have: CheckpointMeta, source_sha256: str | None, tag: str) -> str | None:
    """Why a universal copy is not the one of this writing of `tag`, or None when it is."""
    if have.source_meta_sha256 is None:
        return (f"it does not record which writing of {tag} it was converted from (made by an "
                "earlier version)")
    if have.source_meta_sha256 != source_sha256:
        return (f"it was converted from an earlier {tag} (that meta.json's sha256 "
                f"{have.source_meta_sha256[:12]}…, now {str(source_sha256)[:12]}…: the "
                "checkpoint was written again since)")
    return None


def convert(ckpt_dir: Path, tag: str, meta: CheckpointMeta) -> Path:
    """The universal folder of checkpoint `tag` (already verified by the caller): reused when a
    complete, undamaged one converted from this very `tag` (its meta.json's sha256) is there,
    else converted into a temp folder and renamed into place. Raises CheckpointError (tampered
    files, a failed conversion)."""
    out = ckpt_dir / universal_tag(tag)
    source_sha256 = meta_sha256(ckpt_dir / tag)
    have, problems = existing(ckpt_dir, tag)
    unsafe = [p for p in problems if p.unsafe]
    if unsafe:
        raise CheckpointError(f"refusing to use {out}:\n" + "\n".join(
            f"  - {out / p.file}: {p.reason}" for p in unsafe)
            + "\nNothing was loaded or changed. Inspect the file, or remove the folder to "
            "convert the checkpoint again.")
    stale = stale_problem(have, source_sha256, tag) if have is not None else None
    if have is not None and not problems and stale is None:
        return out
    if out.exists():
        why = stale or "incomplete or damaged:\n" + "\n".join(
            f"  - {p.file}: {p.reason}" for p in problems)
        log.warning("%s is not used: %s; converting %s again", out, why, tag)
        shutil.rmtree(out)
    _remove_leftovers(ckpt_dir, out.name)
    tmp_root = temp_name(out)  # DeepSpeed also writes `latest_universal` beside its output
    staged = tmp_root / out.name
    try:
        _run_ds_to_universal(ckpt_dir / tag, staged)
        with weights_only_loading():
            _loadable_at_every_stage(staged)
        _link_model_states(staged)
        files = {str(p.relative_to(staged)): file_record(p)
                 for p in sorted(staged.rglob("*")) if p.is_file()}
        record = meta.model_copy(update={"format_version": META_FORMAT, "files": files,
                                         "converted_from": tag,
                                         "source_meta_sha256": source_sha256})
        write_atomic(staged / META, record.model_dump_json(indent=1))
        os.rename(staged, out)
        fsync_path(ckpt_dir)
    except UnsafeCheckpointFile as e:
        raise CheckpointError(f"refusing to convert {ckpt_dir / tag}: {e}") from None
    except Exception as e:  # noqa: BLE001 - one message naming the checkpoint
        text = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        raise CheckpointError(f"converting {ckpt_dir / tag} to a universal checkpoint failed: "
                              f"{type(e).__name__}: {text}") from e
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    return out


def convert_collective(ckpt_dir: Path, tag: str, meta: CheckpointMeta) -> str:
    """Collective: rank 0 converts (or reuses) while the others wait; every rank returns the
    universal tag, or raises the same CheckpointError. The others wait in a gloo group of its
    own with a long timeout: converting a large model outlasts NCCL's default 10 minutes."""
    import torch.distributed as dist

    wait = dist.new_group(backend="gloo", timeout=timedelta(seconds=CONVERT_TIMEOUT_S))
    outcome: list = [None]
    if dist.get_rank() == 0:
        try:
            convert(ckpt_dir, tag, meta)
        except CheckpointError as e:
            outcome = [str(e)]
    dist.broadcast_object_list(outcome, src=0, group=wait)
    dist.destroy_process_group(wait)
    if outcome[0] is not None:
        err = CheckpointError(outcome[0])
        err.all_ranks = True
        raise err
    return universal_tag(tag)
