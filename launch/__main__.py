"""python -m launch {local,slurm,hostfile,status} — start, submit and watch training runs.

Exit codes: 0 finished, 75 stopped after saving a checkpoint (resume me), 2 bad input or config,
anything else the first failing rank's code.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from launch.common import LaunchError
from launch.slurm import add_job_options
from pretrain.exit_codes import EXIT_CONFIG, EXIT_OK

OVERRIDES_HELP = "dotted config overrides, e.g. train.max_steps=100 optim.lr=1e-3"


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="run config YAML (configs/*.yaml)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDES_HELP)
    p.add_argument("--omp-threads", type=int, default=None,
                   help="OMP_NUM_THREADS per rank (default: $OMP_NUM_THREADS, else cores / ranks "
                   "on the node)")
    p.add_argument("--print-config", action="store_true",
                   help="check everything, print the resolved config as YAML (bases, overrides, "
                   "paths, vocabulary from the data) and exit 0 without starting a rank")


def _launcher(sub, name: str, summary: str, description: str | None, dry_run: str):
    """A launcher's subcommand with what every launcher takes: the config options and --dry-run
    (`dry_run`: what it prints instead of starting). `description`: the docstring of the
    function that adds the launcher's own options."""
    p = sub.add_parser(name, help=summary, description=" ".join((description or "").split()))
    _add_config(p)
    p.add_argument("--dry-run", action="store_true", help=f"check everything, {dry_run}")
    return p


def _local_parser(sub) -> None:
    """Start N trainer ranks on this machine (gloo on CPU, NCCL on GPU). SIGTERM/SIGUSR1 are
    forwarded to every rank (they save and exit 75); the first Ctrl-C does the same, a second
    one kills."""
    p = _launcher(sub, "local", "N ranks on this machine", _local_parser.__doc__,
                  dry_run="print each rank's command and environment, start nothing")
    p.add_argument("--nproc", type=int, default=None,
                   help="ranks to start (default: number of GPUs, else 1)")


def _slurm_parser(sub) -> None:
    """Render RUNDIR/slurm/job.sbatch and submit it with sbatch. The job asks for SIGUSR1
    before its time limit, saves, exits 75 and requeues itself (up to --max-requeues times); it
    resumes from the last checkpoint on every restart. Prints the job id (the only line on
    stdout)."""
    p = _launcher(sub, "slurm", "render and submit a self-requeueing sbatch job",
                  _slurm_parser.__doc__, dry_run="print the batch script, submit nothing")
    add_job_options(p)
    p.add_argument("--signal-seconds", type=int, default=300,
                   help="ask for SIGUSR1 this long before the time limit (default 300)")
    p.add_argument("--python", default=sys.executable,
                   help="interpreter on the compute nodes (default: this one)")
    p.add_argument("--hold", action="store_true",
                   help="submit held; start it with `scontrol release JOBID`")


def _hostfile_parser(sub) -> None:
    """Multi-node without SLURM through DeepSpeed's launcher. Default: pdsh/ssh from this node
    to every host in the hostfile. --no-ssh: run this command once on every node with its
    --node-rank."""
    p = _launcher(sub, "hostfile", "multi-node via DeepSpeed's launcher (pdsh/ssh)",
                  _hostfile_parser.__doc__,
                  dry_run="print DeepSpeed's launcher command, start nothing")
    p.add_argument("--hostfile", required=True,
                   help="DeepSpeed hostfile: one `HOST slots=N` line per node")
    p.add_argument("--master-addr", default=None,
                   help="address of the first node (required with --no-ssh; default: the first "
                   "host's, from `hostname -I` over ssh)")
    p.add_argument("--master-port", type=int, default=29500,
                   help="rendezvous port on the first node (default 29500)")
    p.add_argument("--no-ssh", action="store_true",
                   help="per-node mode: start only this node's ranks (needs --node-rank)")
    p.add_argument("--node-rank", type=int, default=None,
                   help="with --no-ssh: this node's line in the hostfile, counting from 0")
    p.add_argument("--ssh-port", type=int, default=None, help="ssh port (default: ssh's own)")


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog or "python -m launch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _local_parser(sub)
    _slurm_parser(sub)
    _hostfile_parser(sub)
    st = sub.add_parser("status", help="job state, restarts, checkpoint, metrics, ETA",
                        description="Show a run folder's SLURM job state (squeue, else the "
                        "job-completion record), restarts, why it failed, the last complete "
                        "checkpoint, the last metrics line and an ETA.")
    st.add_argument("run_dir", metavar="RUNDIR", help="the run folder (run_dir of the config)")
    st.add_argument("--json", action="store_true", help="print one JSON object instead")
    st.add_argument("--remote-timeout", type=float, default=None, metavar="SECONDS",
                    help="with checkpoint.remote: how long to try the store for the remote "
                    "`latest` before reporting it unknown (default: 5)")
    return parser


def _run_slurm(args) -> int:
    from launch.common import print_config, validate_or_exit
    from launch.slurm import (
        SlurmJob,
        job_options,
        render_script,
        submit,
        validate,
        write_script,
    )

    job = SlurmJob(config=args.config, overrides=list(args.overrides), run_dir="",
                   signal_seconds=args.signal_seconds, python=args.python, **job_options(args))
    validate(job)  # options first: cheap, and before the config is even read
    cfg = validate_or_exit(args.config, args.overrides, world_size=job.world_size,
                           ranks_per_node=job.ntasks_per_node)
    job.config = str(Path(args.config).resolve())
    job.run_dir = str(Path(cfg.run_dir).resolve())
    validate(job)
    ckpt = cfg.checkpoint
    if ckpt.remote and ckpt.remote_timeout >= job.signal_seconds:
        print(f"warning: checkpoint.remote_timeout={ckpt.remote_timeout:g} s is not below "
              f"--signal-seconds {job.signal_seconds}: a stop before the time limit may be "
              "killed while it waits for the upload", file=sys.stderr)
    if args.print_config:
        return print_config(cfg)
    if args.dry_run:
        sys.stdout.write(render_script(job))
        return EXIT_OK
    script = write_script(job)
    job_id = submit(script, hold=args.hold)
    print(f"Submitted batch job {job_id}: {job.world_size} rank(s) on {job.nodes} node(s); "
          f"script {script}; log {script.parent}/job-{job_id}.out", file=sys.stderr)
    print(job_id)  # the result alone on stdout: `JOB=$(arrowtrain launch slurm ...)`
    return EXIT_OK


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    from pretrain.logs import setup_logging

    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(prog).parse_args(argv)
    setup_logging()
    try:
        if getattr(args, "omp_threads", None) is not None and args.omp_threads < 1:
            raise LaunchError(f"--omp-threads: must be >= 1, got {args.omp_threads}")
        if args.command == "local":
            from launch.local import run_local

            if args.nproc is not None and args.nproc < 1:
                raise LaunchError(f"--nproc: must be >= 1, got {args.nproc}")

            return run_local(args.config, list(args.overrides), args.nproc, args.omp_threads,
                             print_config=args.print_config, dry_run=args.dry_run)
        if args.command == "slurm":
            return _run_slurm(args)
        if args.command == "hostfile":
            from launch.hostfile import run_hostfile

            return run_hostfile(args)
        from launch.status import run_status

        return run_status(args.run_dir, as_json=args.json, remote_timeout_s=args.remote_timeout)
    except LaunchError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
