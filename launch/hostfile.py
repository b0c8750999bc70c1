"""`python -m launch hostfile`: multi-node without SLURM through DeepSpeed's own launcher.

Default mode: `deepspeed --hostfile H` reaches every host with pdsh/ssh from this node. With
--no-ssh, run this command once on every node with its --node-rank (DeepSpeed's `--no_ssh`
per-node mode). Either way each rank gets RANK/LOCAL_RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT from
DeepSpeed's launcher and OMP_NUM_THREADS from us (through a DeepSpeed env file for ssh hosts).
SIGTERM/SIGUSR1 (and Ctrl-C, as SIGTERM) go straight to this node's trainer processes, which
save and exit 75; DeepSpeed's launcher then passes that code back.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

from launch.common import (
    EXIT_OK,
    TRAIN_MODULE,
    LaunchError,
    check_text,
    default_omp_threads,
    describe_exit,
    normalize_code,
    print_config,
    train_env,
    validate_or_exit,
)

_SAFE_WORD = re.compile(r"^[\w@%+=:,./-]*$")  # needs no quoting in a shell
_HOST_LINE = re.compile(r"^(?P<host>[A-Za-z0-9][A-Za-z0-9.\-]*)\s+slots=(?P<slots>\d+)\s*$")


def read_hostfile(path: str) -> dict[str, int]:
    """`HOST slots=N` per line ('#' comments); errors name the file and line."""
    check_text("--hostfile", path)
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise LaunchError(f"--hostfile {path}: {e.strerror}") from None
    hosts: dict[str, int] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = _HOST_LINE.match(line)
        if not m or int(m["slots"]) < 1:
            raise LaunchError(f"{path} line {n}: expected `HOST slots=N` (N >= 1), got {raw!r}")
        if m["host"] in hosts:
            raise LaunchError(f"{path} line {n}: host {m['host']!r} listed twice")
        hosts[m["host"]] = int(m["slots"])
    if not hosts:
        raise LaunchError(f"--hostfile {path}: no hosts")
    return hosts


def deepspeed_command(args, hosts: dict[str, int]) -> list[str]:
    cmd = [sys.executable, "-u", "-m", "deepspeed.launcher.runner",
           "--hostfile", str(Path(args.hostfile).resolve()), "--no_local_rank", "--module",
           "--master_port", str(args.master_port)]
    if args.master_addr:
        cmd += ["--master_addr", check_text("--master-addr", args.master_addr)]
    if args.ssh_port:
        cmd += ["--ssh_port", str(args.ssh_port)]
    if args.no_ssh:
        cmd += ["--no_ssh", "--node_rank", str(args.node_rank)]
    user_args = ["--config", str(Path(args.config).resolve()), *args.overrides]
    if not args.no_ssh:
        # pdsh mode: DeepSpeed joins these into one command line for the remote shell, unquoted
        # (and `cd`s there to this folder unquoted), so quote them here and refuse what can't be.
        if not _SAFE_WORD.match(os.getcwd()):
            raise LaunchError(f"working directory {os.getcwd()!r}: DeepSpeed's ssh mode passes "
                              "it to the remote shell unquoted; run from a plain path or use "
                              "--no-ssh")
        user_args = [shlex.quote(a) for a in user_args]
    return [*cmd, TRAIN_MODULE, *user_args]


ENV_FILE_KEYS = ["OMP_NUM_THREADS", "DS_ACCELERATOR", "WANDB_MODE", "TOKENIZERS_PARALLELISM"]


def env_file_lines(env: dict[str, str]) -> list[str]:
    """The KEY=VALUE lines of DeepSpeed's env file (refusing values a remote shell would
    misread)."""
    unsafe = [k for k in ENV_FILE_KEYS if k in env and not _SAFE_WORD.match(env[k])]
    if unsafe:  # DeepSpeed writes them into the remote command inside double quotes only
        raise LaunchError(f"environment {', '.join(unsafe)}: only letters, digits and "
                          "@%+=:,./_- can be passed to ssh hosts")
    return [f"{k}={env[k]}" for k in ENV_FILE_KEYS if k in env]


def write_env_file(run_dir: Path, env: dict[str, str]) -> Path:
    """DeepSpeed's env file: exported to every ssh host (KEY=VALUE lines, no shell)."""
    lines = env_file_lines(env)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "deepspeed_env"
    path.write_text("".join(line + "\n" for line in lines))
    return path


def _trainer_pids(root: int) -> list[int]:
    """Descendants of `root` running the trainer module (Linux /proc). Signalling DeepSpeed's
    launch.py instead would kill it (Python's default for SIGUSR1) and the runner would then
    report exit code 0."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            todo.append(child)
            try:
                argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            # `python -m pretrain.train`, not DeepSpeed's launch.py that has it as an argument
            if any(a == b"-m" and b == TRAIN_MODULE.encode() for a, b in zip(argv, argv[1:])):
                found.append(child)
    return found


def _forward(proc: subprocess.Popen):
    def handler(signum, _frame):
        sig = signal.SIGTERM if signum == signal.SIGINT else signum
        pids = _trainer_pids(proc.pid)
        print(f"[launch] sending {signal.Signals(sig).name} to trainer pids {pids}",
              file=sys.stderr, flush=True)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
    return handler


def run_hostfile(args) -> int:
    hosts = read_hostfile(args.hostfile)
    if args.no_ssh and (args.node_rank is None or args.master_addr is None):
        raise LaunchError("--no-ssh needs --node-rank and --master-addr")
    if args.node_rank is not None and not 0 <= args.node_rank < len(hosts):
        raise LaunchError(f"--node-rank {args.node_rank}: the hostfile has {len(hosts)} nodes")
    world_size = sum(hosts.values())
    cfg = validate_or_exit(args.config, args.overrides, world_size=world_size)
    if getattr(args, "print_config", False):
        return print_config(cfg)
    local_ranks = list(hosts.values())[args.node_rank or 0]
    env = train_env(omp_threads=args.omp_threads or default_omp_threads(local_ranks))
    if getattr(args, "dry_run", False):
        cmd = deepspeed_command(args, hosts)
        print(f"# {world_size} rank(s) on {len(hosts)} node(s); ssh hosts get "
              f"{Path(cfg.run_dir) / 'deepspeed_env'}: {env_file_lines(env)!r}")
        print(shlex.join(["env", f"OMP_NUM_THREADS={env['OMP_NUM_THREADS']}",
                          f"PYTHONPATH={env['PYTHONPATH']}", *cmd]))
        return EXIT_OK
    env["DS_ENV_FILE"] = str(write_env_file(Path(cfg.run_dir).resolve(), env))
    cmd = deepspeed_command(args, hosts)
    print(f"[launch] {world_size} rank(s) on {len(hosts)} node(s); OMP_NUM_THREADS="
          f"{env['OMP_NUM_THREADS']}; {' '.join(cmd)}", file=sys.stderr, flush=True)
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, _forward(proc))
    code = normalize_code(proc.wait())
    print(f"[launch] exit code {code} ({describe_exit(code)})", file=sys.stderr, flush=True)
    return code
