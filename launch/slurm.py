"""`python -m launch slurm`: render RUNDIR/slurm/job.sbatch and submit it.

The batch script runs one `srun` task per GPU (or per --tasks-per-node), maps the SLURM
variables to RANK/LOCAL_RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT, asks Slurm for SIGUSR1 some
seconds before the time limit, appends to its log across restarts, and on exit code 75 requeues
its own job (at most --max-requeues times). Safety: `#SBATCH` lines carry only values that match
strict patterns (numbers, Slurm time formats, plain names); every other user value (paths,
overrides, the interpreter) goes into the bash body through shlex.quote, and control characters
are refused everywhere. `render_array_script`: one job array whose tasks are ordinary runs in
their own folders (`arrowtrain sweep`), each with the same requeue logic. The job's output path is relative (sbatch runs in RUNDIR/slurm), so no
user path is ever parsed by sbatch's own directive reader.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from launch.common import REPO, TRAIN_MODULE, LaunchError, check_all, check_text
from pretrain.exit_codes import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, EXIT_RESUME

SCRIPT_NAME = "job.sbatch"
JOBS_FILE = "jobs"  # one submitted job id per line, newest last
EVENTS_FILE = "events.jsonl"  # one JSON line per start / requeue / finish / failure
LOG_PATTERN = "job-%j.out"

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
_NAME_LIST_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+,-]{0,255}$")
_TIME_RE = re.compile(r"^(\d+|\d+:\d{1,2}(:\d{1,2})?|\d+-\d+(:\d{1,2}(:\d{1,2})?)?)$")
MAX_SIGNAL_SECONDS = 65535  # Slurm stores the warning time in 16 bits


@dataclass
class SlurmJob:
    """Everything that goes into the batch script (already validated by `validate`)."""

    config: str
    overrides: list[str]
    run_dir: str
    nodes: int = 1
    tasks_per_node: int | None = None
    gpus_per_node: int | None = None
    cpus_per_task: int | None = None
    time: str | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    job_name: str = "arrowtrain"
    max_requeues: int = 10
    signal_seconds: int = 300
    omp_threads: int | None = None
    python: str = field(default_factory=lambda: sys.executable)
    work_dir: str = field(default_factory=os.getcwd)
    repo_dir: str = str(REPO)

    @property
    def ntasks_per_node(self) -> int:
        return self.tasks_per_node or self.gpus_per_node or 1

    @property
    def world_size(self) -> int:
        return self.nodes * self.ntasks_per_node


# SlurmJob's fields that are a job's options on the command line (`add_job_options`)
JOB_OPTIONS = ("nodes", "tasks_per_node", "gpus_per_node", "cpus_per_task", "time", "partition",
               "account", "qos", "job_name", "max_requeues", "omp_threads")


def add_job_options(p, count=int, per: str = "", job_name: str = "arrowtrain") -> None:
    """The options of one allocation, as `launch slurm` takes them and `arrowtrain sweep
    --launcher slurm` per run (`per`: " per run"; `count`: its argparse type of the counts)."""
    p.add_argument("--nodes", type=count, default=1, help=f"nodes to allocate{per} (default: 1)")
    p.add_argument("--gpus-per-node", type=count, default=None,
                   help="GPUs per node, one task each (default: no GPUs)")
    p.add_argument("--tasks-per-node", type=count, default=None,
                   help="tasks (ranks) per node (default: --gpus-per-node, else 1)")
    p.add_argument("--cpus-per-task", type=count, default=None,
                   help="CPU cores per task (default: the site's)")
    p.add_argument("--time", default=None,
                   help=f"time limit{per}, e.g. 1-00:00:00 or 30:00 (default: the partition's)")
    p.add_argument("--partition", default=None, help="partition(s) (default: the site's)")
    p.add_argument("--account", default=None, help="account to charge (default: yours)")
    p.add_argument("--qos", default=None, help="quality of service (default: the site's)")
    p.add_argument("--job-name", default=job_name, help=f"job name (default: {job_name})")
    p.add_argument("--max-requeues", type=int, default=10,
                   help=f"requeue at most this many times{per} on exit 75 (default: 10)")


def job_options(args) -> dict:
    """The JOB_OPTIONS of parsed arguments, for SlurmJob(...)."""
    return {name: getattr(args, name) for name in JOB_OPTIONS}


def _positive(problems: list[str], option: str, value: int | None, minimum: int = 1) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or value < minimum):
        problems.append(f"{option}: must be an integer >= {minimum}, got {value!r}")


def _pattern(problems: list[str], option: str, value: str | None, regex: re.Pattern,
             what: str) -> None:
    if value is None:
        return
    try:
        check_text(option, value)
    except LaunchError as err:
        problems.append(str(err))
        return
    if not regex.match(value):
        problems.append(f"{option}: {value!r} is not {what}")


def validate(job: SlurmJob) -> SlurmJob:
    """Check every value; raise LaunchError listing all problems at once."""
    problems: list[str] = []
    for option, value in (("--nodes", job.nodes), ("--tasks-per-node", job.tasks_per_node),
                          ("--gpus-per-node", job.gpus_per_node),
                          ("--cpus-per-task", job.cpus_per_task),
                          ("--omp-threads", job.omp_threads),
                          ("--signal-seconds", job.signal_seconds)):
        _positive(problems, option, value)
    _positive(problems, "--max-requeues", job.max_requeues, minimum=0)
    if job.signal_seconds > MAX_SIGNAL_SECONDS:
        problems.append(f"--signal-seconds: at most {MAX_SIGNAL_SECONDS}")
    name = "a name of letters, digits and . _ + - (at most 128)"
    _pattern(problems, "--job-name", job.job_name, _NAME_RE, name)
    _pattern(problems, "--account", job.account, _NAME_RE, name)
    _pattern(problems, "--qos", job.qos, _NAME_RE, name)
    _pattern(problems, "--partition", job.partition, _NAME_LIST_RE,
             "a comma-separated list of partition names")
    _pattern(problems, "--time", job.time, _TIME_RE,
             "a Slurm time limit (M, M:S, H:M:S, D-H, D-H:M or D-H:M:S)")
    for option, values in (("--config", [job.config]), ("override", job.overrides),
                           ("run_dir", [job.run_dir]), ("--python", [job.python]),
                           ("working directory", [job.work_dir]),
                           ("repository path", [job.repo_dir])):
        try:
            check_all(option, values)
        except LaunchError as err:
            problems.append(str(err))
    if problems:
        raise LaunchError("invalid slurm options:\n" + "\n".join(f"  - {p}" for p in problems))
    return job


def sbatch_directives(job: SlurmJob, output: str = LOG_PATTERN,
                      array: str | None = None) -> list[str]:
    lines = [f"--job-name={job.job_name}", f"--nodes={job.nodes}",
             f"--ntasks-per-node={job.ntasks_per_node}"]
    if array is not None:
        lines.append(f"--array={array}")
    if job.gpus_per_node:
        lines.append(f"--gpus-per-node={job.gpus_per_node}")
    if job.cpus_per_task:
        lines.append(f"--cpus-per-task={job.cpus_per_task}")
    for key in ("time", "partition", "account", "qos"):
        if getattr(job, key):
            lines.append(f"--{key}={getattr(job, key)}")
    lines += [f"--output={output}", "--open-mode=append", "--requeue",
              f"--signal=USR1@{job.signal_seconds}"]
    return [f"#SBATCH {line}" for line in lines]


SCRIPT_BODY = r"""
RESTARTS="${SLURM_RESTART_COUNT:-0}"
SLURM_DIR="$RUN_DIR/slurm"
RC_DIR="$SLURM_DIR/rc/$SLURM_JOB_ID.$RESTARTS"
now() { date -u +%Y-%m-%dT%H:%M:%SZ; }
log() { printf '[launch %s job %s restart %s] %s\n' "$(now)" "$SLURM_JOB_ID" "$RESTARTS" "$*"; }
event() {  # event NAME RC -- fixed names and numbers only
  printf '{"time": "%s", "job_id": %s, "restart": %s, "event": "%s", "rc": %s}\n' \
    "$(now)" "$SLURM_JOB_ID" "$RESTARTS" "$1" "$2" >> "$SLURM_DIR/events.jsonl"
}

cd "$WORK_DIR" || { log "FAILED: cannot cd to $WORK_DIR"; event failed "$EXIT_FAILED"; exit "$EXIT_FAILED"; }
mkdir -p "$RC_DIR"
export PYTHONPATH="$REPO_DIR${PYTHONPATH:+:$PYTHONPATH}"
MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
export MASTER_ADDR
export MASTER_PORT=$(( 15000 + SLURM_JOB_ID % 20000 ))
export OMP_NUM_THREADS="${OMP_THREADS:-${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}}"
export ARROWTRAIN_RESTART_COUNT="$RESTARTS" SLURM_RESTART_COUNT="$RESTARTS"
log "start: nodes $SLURM_JOB_NODELIST, $SLURM_NTASKS tasks, master $MASTER_ADDR:$MASTER_PORT, OMP_NUM_THREADS=$OMP_NUM_THREADS"
event start null

run_task() {  # one per srun task: SLURM ids -> torch.distributed ranks, then the trainer
  local rc_dir=$1 pid rc; shift
  export RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID WORLD_SIZE=$SLURM_NTASKS
  "$@" &
  pid=$!
  trap 'kill -USR1 "$pid" 2>/dev/null' USR1  # signals make `wait` return early: loop
  trap 'kill -TERM "$pid" 2>/dev/null' TERM
  while :; do wait "$pid"; rc=$?; kill -0 "$pid" 2>/dev/null || break; done
  echo "$rc" > "$rc_dir/rank-$RANK"
  exit "$rc"
}
export -f run_task
srun --label --kill-on-bad-exit=0 bash -c 'run_task "$@"' run_task "$RC_DIR" \
  "$PYTHON" -m "$TRAIN_MODULE" "${TRAIN_ARGS[@]}" &
srun_pid=$!
trap 'log "batch shell got SIGTERM; forwarding to the tasks"; kill -TERM "$srun_pid" 2>/dev/null' TERM
trap 'log "batch shell got SIGUSR1; forwarding to the tasks"; kill -USR1 "$srun_pid" 2>/dev/null' USR1
while :; do wait "$srun_pid"; rc=$?; kill -0 "$srun_pid" 2>/dev/null || break; done

# Combine the ranks' own exit codes: 75 only if some rank said 75 and none failed.
n=0; fail=""; resume=0
for f in "$RC_DIR"/rank-*; do
  [ -e "$f" ] || continue
  c=$(cat "$f"); n=$((n + 1))
  case "$c" in "$EXIT_OK") ;; "$EXIT_RESUME") resume=1 ;; *) [ -z "$fail" ] && fail=$c ;; esac
done
if [ "$n" -eq "$SLURM_NTASKS" ]; then
  if [ -n "$fail" ]; then rc=$fail; elif [ "$resume" = 1 ]; then rc=$EXIT_RESUME; else rc=$EXIT_OK; fi
elif [ "$rc" -eq "$EXIT_OK" ] || [ "$rc" -eq "$EXIT_RESUME" ]; then
  log "only $n of $SLURM_NTASKS tasks reported an exit code"; rc=$EXIT_FAILED
fi

case "$rc" in
  "$EXIT_OK") log "finished: training reached its last step"; event finished "$rc"; exit "$rc" ;;
  "$EXIT_RESUME")
    if [ "$RESTARTS" -lt "$MAX_REQUEUES" ]; then
      log "stopped after saving a checkpoint; requeueing (restart $((RESTARTS + 1)) of at most $MAX_REQUEUES)"
      event requeue "$rc"
      if scontrol requeue "$SLURM_JOB_ID"; then sleep 60 & wait $!; fi
      log "requeue did not take effect; resubmit $RUN_DIR/slurm/job.sbatch to continue"
    else
      log "stopped after saving a checkpoint, but --max-requeues=$MAX_REQUEUES is reached; resubmit to continue"
      event max_requeues "$rc"
    fi
    exit "$rc" ;;
  *)
    case "$rc" in "$EXIT_CONFIG") why="config or data error" ;; "$EXIT_FAILED") why="error" ;; *) why="exit code $rc" ;; esac
    log "FAILED: training exited with code $rc ($why); not requeued. See the rank output above."
    event failed "$rc"
    exit "$rc" ;;
esac
""".strip()


def _train_args(config: str, overrides: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in ["--config", config, *overrides])


def _shared_values(job: SlurmJob) -> list[str]:
    q = shlex.quote
    return [f"WORK_DIR={q(job.work_dir)}", f"REPO_DIR={q(job.repo_dir)}",
            f"PYTHON={q(job.python)}", f"TRAIN_MODULE={q(TRAIN_MODULE)}",
            f"MAX_REQUEUES={int(job.max_requeues)}",
            f"EXIT_OK={EXIT_OK} EXIT_FAILED={EXIT_FAILED} EXIT_CONFIG={EXIT_CONFIG} "
            f"EXIT_RESUME={EXIT_RESUME}  # pretrain/exit_codes.py",
            f"OMP_THREADS={int(job.omp_threads) if job.omp_threads else ''}"]


def render_script(job: SlurmJob) -> str:
    """The complete batch script. Every user value passes through shlex.quote."""
    q = shlex.quote
    slurm_dir = str(Path(job.run_dir) / "slurm")
    header = [
        "#!/bin/bash", *sbatch_directives(job), "#",
        "# Generated by `python -m launch slurm`; every value below is validated and quoted.",
        f"# Resubmit by hand from its folder (the log path is relative): cd {q(slurm_dir)} "
        f"&& sbatch {SCRIPT_NAME}",
        "set -uo pipefail", "",
        f"RUN_DIR={q(job.run_dir)}", *_shared_values(job)[:4],
        f"TRAIN_ARGS=({_train_args(job.config, job.overrides)})", *_shared_values(job)[4:],
        "",
    ]
    return "\n".join(header) + SCRIPT_BODY + "\n"


# ---- job arrays (arrowtrain sweep) ---------------------------------------------------------

ARRAY_SCRIPT_NAME = "sweep.sbatch"
ARRAY_LOG_PATTERN = "sweep-%A_%a.out"  # until a task has chosen its run


@dataclass(frozen=True)
class ArrayTask:
    """One task of a job array: an ordinary run in its own run folder."""

    run_dir: str
    overrides: list[str]


def validate_array(job: SlurmJob, tasks: list[ArrayTask], parallel: int | None) -> None:
    """The job's options (validate) and every task's values; LaunchError listing all."""
    problems: list[str] = []
    _positive(problems, "--parallel", parallel)
    if not tasks:
        problems.append("a job array needs at least one run")
    for t in tasks:
        for option, values in (("run_dir", [t.run_dir]), ("override", t.overrides)):
            try:
                check_all(option, values)
            except LaunchError as err:
                problems.append(str(err))
    try:
        validate(job)
    except LaunchError as err:
        problems += [line.strip()[2:] for line in str(err).splitlines()[1:]]
    if problems:
        raise LaunchError("invalid slurm options:\n" + "\n".join(f"  - {p}" for p in problems))


ARRAY_SELECT = r"""
mkdir -p "$RUN_DIR/slurm"
# `launch status RUNDIR` finds this task's job id and log where a single job's would be.
[ "$(tail -n 1 "$RUN_DIR/slurm/jobs" 2>/dev/null)" = "$SLURM_JOB_ID" ] || \
  echo "$SLURM_JOB_ID" >> "$RUN_DIR/slurm/jobs"
exec >> "$RUN_DIR/slurm/job-$SLURM_JOB_ID.out" 2>&1
""".strip()


def render_array_script(job: SlurmJob, tasks: list[ArrayTask], parallel: int | None) -> str:
    """One SLURM job array, task i running tasks[i] (at most `parallel` at a time). Each task
    is the single-job script's body for its own run folder: it requeues itself on exit 75
    (SLURM_JOB_ID is the task's own id), appends to RUNDIR/slurm/job-ID.out and its events to
    RUNDIR/slurm/events.jsonl, and records its id in RUNDIR/slurm/jobs. Values are quoted."""
    q = shlex.quote
    array = f"0-{len(tasks) - 1}" + (f"%{int(parallel)}" if parallel else "")
    cases = [f"  {i}) RUN_DIR={q(t.run_dir)}; TRAIN_ARGS=({_train_args(job.config, t.overrides)})"
             " ;;" for i, t in enumerate(tasks)]
    header = [
        "#!/bin/bash", *sbatch_directives(job, ARRAY_LOG_PATTERN, array), "#",
        "# Generated by `arrowtrain sweep`; every value below is validated and quoted. One task",
        "# per run; each requeues itself on exit 75 like `launch slurm`'s job.",
        "set -uo pipefail", "", *_shared_values(job), "",
        'case "${SLURM_ARRAY_TASK_ID:-}" in', *cases,
        '  *) echo "no run for array task ${SLURM_ARRAY_TASK_ID:-unset}" >&2; '
        'exit "$EXIT_FAILED" ;;', "esac", ARRAY_SELECT, "",
    ]
    return "\n".join(header) + SCRIPT_BODY + "\n"


def write_array_script(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ARRAY_SCRIPT_NAME
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.chmod(0o755)
    os.replace(tmp, path)
    return path


def write_script(job: SlurmJob) -> Path:
    slurm_dir = Path(job.run_dir) / "slurm"
    slurm_dir.mkdir(parents=True, exist_ok=True)
    path = slurm_dir / SCRIPT_NAME
    tmp = path.with_suffix(".tmp")
    tmp.write_text(render_script(job))
    tmp.chmod(0o755)
    os.replace(tmp, path)
    return path


def submit(script: Path, hold: bool = False) -> str:
    """sbatch (argv, no shell) from the script's folder; returns the job id."""
    cmd = ["sbatch", "--parsable", *(["--hold"] if hold else []), script.name]
    try:
        res = subprocess.run(cmd, cwd=script.parent, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise LaunchError("sbatch not found: is this a SLURM login node?") from None
    if res.returncode != 0:
        raise LaunchError(f"sbatch failed ({res.returncode}): {res.stderr.strip()}")
    job_id = res.stdout.strip().split(";")[0]
    if not job_id.isdigit():
        raise LaunchError(f"sbatch printed no job id: {res.stdout!r}")
    with open(script.parent / JOBS_FILE, "a") as f:
        f.write(job_id + "\n")
    return job_id
