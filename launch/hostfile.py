"""`python -m launch hostfile`: multi-node without SLURM through DeepSpeed's own launcher.

Default mode: `deepspeed --hostfile H` reaches every host with pdsh/ssh from this node. Before it
starts, one pdsh round checks that every host answers over ssh and has this working directory
and this Python (all problems in one message, exit 2). With --no-ssh, run this command once on
every node with its --node-rank (DeepSpeed's `--no_ssh` per-node mode). Either way each rank gets
RANK/LOCAL_RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT from DeepSpeed's launcher, and OMP_NUM_THREADS
plus a fresh ARROWTRAIN_LAUNCH_ID from us (through a DeepSpeed env file for ssh hosts; DeepSpeed
itself exports PYTHONPATH). With s3:// data the AWS variables go to ssh hosts inside ssh
(SendEnv; the hosts' sshd needs `AcceptEnv AWS_*`, checked before start), never in the env file.

SIGTERM/SIGUSR1 (and Ctrl-C, as SIGTERM) go to the trainer processes of this launch only — found
by that id, on every host through pdsh (`python -m launch.signal_trainers`) or on this node with
--no-ssh — which save and exit 75. Exit code: pdsh reports each failing host's code; they combine
as `launch local` combines ranks' codes (0 all done, 75 all stopped or done, else the first
failure), since pdsh's own `-S` (the largest code) would report 75 for a host that failed with 1.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from data_tools.remote import remote_env
from launch.common import (
    REPO,
    TRAIN_MODULE,
    LaunchError,
    check_text,
    combine_exit_codes,
    default_omp_threads,
    normalize_code,
    print_config,
    train_env,
    validate_or_exit,
)
from launch.signal_trainers import LAUNCH_ID_VAR, signal_trainers
from pretrain.exit_codes import EXIT_OK, describe_exit
from pretrain.train.signals import Repeats

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


def remote_word(arg: str) -> str:
    """`arg` as one word of the remote shell's command line, given how DeepSpeed's pdsh runner
    joins user arguments (`PDSHRunner.parse_user_args`): an argument holding a space is wrapped
    in double quotes with only `"` escaped, any other is passed as it is. So: escape what double
    quotes still expand (\\ $ `) when there is a space, else quote the usual way."""
    if " " in arg:
        return re.sub(r"([\\$`])", r"\\\1", arg)
    return shlex.quote(arg)


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
        # pdsh mode: DeepSpeed joins these into one command line for the remote shell (and
        # `cd`s there to this folder unquoted), so quote them here and refuse what can't be.
        if not _SAFE_WORD.match(os.getcwd()):
            raise LaunchError(f"working directory {os.getcwd()!r}: DeepSpeed's ssh mode passes "
                              "it to the remote shell unquoted; run from a plain path or use "
                              "--no-ssh")
        cmd.append("--no_ssh_check")  # check_hosts() has asked every host, not just the first
        user_args = [remote_word(a) for a in user_args]
    return [*cmd, TRAIN_MODULE, *user_args]


ENV_FILE_KEYS = ["OMP_NUM_THREADS", "DS_ACCELERATOR", "WANDB_MODE", "TOKENIZERS_PARALLELISM",
                 LAUNCH_ID_VAR]


def env_file_lines(env: dict[str, str]) -> list[str]:
    """The KEY=VALUE lines of DeepSpeed's env file (refusing values a remote shell would
    misread). Never a secret: the file stays in the run folder."""
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


# ---- pdsh: the same transport DeepSpeed uses, for our own checks and signals ----------------

# pdsh's own report for a host whose remote command failed (pdsh 2.x, `%p: %S: %s exited ...`)
_PDSH_EXIT = re.compile(r"^pdsh@[^:]*: (?P<host>[^:\s]+): \S+ exited with "
                        r"(?:exit code (?P<code>\d+)|nonzero status 0x(?P<status>[0-9a-fA-F]+))")


def pdsh_exit(line: str) -> tuple[str, int] | None:
    """(host, exit code) from pdsh's line about a failed host; a signal death counts as
    128 + signal, as shells report it."""
    m = _PDSH_EXIT.match(line.strip())
    if not m:
        return None
    if m["code"] is not None:
        return m["host"], int(m["code"])
    status = int(m["status"], 16)
    return m["host"], (128 + (status & 0x7F)) if status & 0x7F else status >> 8


def pdsh_host(label: str, hosts: list[str]) -> str | None:
    """The hostfile host behind one of pdsh's labels (pdsh drops a domain that all hosts
    share: `node1.cluster` is labelled `node1`)."""
    if label in hosts:
        return label
    matches = [h for h in hosts if h.startswith(label + ".")]
    return matches[0] if len(matches) == 1 else None


def host_codes_exit(hosts: list[str], failed: dict[str, int], runner_code: int) -> int:
    """One exit code for the launch: each host's code (0 where pdsh reported nothing), combined
    like ranks' codes; the runner's own code where pdsh reported no host (it never started)."""
    if not failed:
        return runner_code
    unknown = [c for h, c in failed.items() if h not in hosts]  # a label we could not map
    return combine_exit_codes([failed.get(h, 0) for h in hosts] + unknown)


def pdsh_env(env: dict[str, str], ssh_port: int | None) -> dict[str, str]:
    out = dict(env, PDSH_RCMD_TYPE="ssh")
    if ssh_port:
        out["PDSH_SSH_ARGS_APPEND"] = f"{env.get('PDSH_SSH_ARGS_APPEND', '')} -p {ssh_port}"
    return out


def run_pdsh(hosts: list[str], command: str, env: dict[str, str], ssh_port: int | None,
             timeout_s: float = 120) -> tuple[dict[str, int], dict[str, list[str]]]:
    """Run `command` on every host at once: (failed host -> exit code, host -> output lines)."""
    try:
        res = subprocess.run(["pdsh", "-S", "-t", "20", "-w", ",".join(hosts), command],
                             env=pdsh_env(env, ssh_port), capture_output=True, text=True,
                             timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise LaunchError(f"pdsh to {', '.join(hosts)} did not finish in {timeout_s:.0f} s") \
            from None
    failed: dict[str, int] = {}
    output: dict[str, list[str]] = {h: [] for h in hosts}
    for line in (res.stdout + res.stderr).splitlines():
        if (hit := pdsh_exit(line)) is not None:
            failed[pdsh_host(hit[0], hosts) or hit[0]] = hit[1]
        elif ": " in line and (host := pdsh_host(line.split(": ", 1)[0], hosts)):
            output[host].append(line.split(": ", 1)[1])
    return failed, output


def _need_pdsh() -> None:
    import shutil

    if not shutil.which("pdsh"):
        raise LaunchError("pdsh not found on PATH: DeepSpeed's ssh mode starts the hosts with "
                          "it (e.g. `apt-get install pdsh`); or run with --no-ssh on every node")


def send_aws_env(env: dict[str, str]) -> list[str]:
    """s3:// data: the AWS variables set here travel to the ssh hosts inside the ssh protocol
    (`-o SendEnv=AWS_*` for pdsh's ssh, DeepSpeed's included; the hosts' sshd must have
    `AcceptEnv AWS_*`), never on a command line or in a file. Returns their names."""
    names = sorted(remote_env(env))
    if names:
        env["PDSH_SSH_ARGS_APPEND"] = f"{env.get('PDSH_SSH_ARGS_APPEND', '')} -o SendEnv=AWS_*"
    return names


def check_hosts(hosts: list[str], env: dict[str, str], ssh_port: int | None,
                cwd: str | None = None, aws_names: list[str] = ()) -> None:
    """Before anything starts: every host answers over ssh (key only, no prompt) and has this
    working directory (`cwd`, default ours) and this Python — DeepSpeed would `cd` there and go
    on in $HOME if the folder were missing — and receives the AWS variables `aws_names` (names
    only: values are never printed). All failing hosts in one LaunchError."""
    _need_pdsh()
    cwd, py = shlex.quote(cwd or os.getcwd()), shlex.quote(sys.executable)
    command = (f"cd {cwd} || exit 3; test -x {py} || {{ echo no executable {py} >&2; exit 3; }}")
    for name in aws_names:   # fixed names from data_tools.remote.ENV_VARS
        command += (f'; test -n "${{{name}:-}}" || {{ echo "{name} did not arrive over ssh: add '
                    f"'AcceptEnv AWS_*' to the host's sshd_config\" >&2; exit 4; }}")
    env = dict(env, PDSH_SSH_ARGS_APPEND=f"{env.get('PDSH_SSH_ARGS_APPEND', '')} -o BatchMode=yes")
    failed, output = run_pdsh(hosts, command, env, ssh_port)
    if failed:
        lines = [f"  {h}: {'; '.join(output[h]) or f'exit code {failed[h]}'}"
                 for h in hosts if h in failed]
        raise LaunchError(f"{len(failed)} of {len(hosts)} host(s) cannot start ranks over ssh "
                          f"(pdsh{f', port {ssh_port}' if ssh_port else ''}):\n"
                          + "\n".join(lines))


# ---- running: the runner's output relayed, signals forwarded by launch id -------------------

class Relay(threading.Thread):
    """Copy the runner's stderr (pdsh's per-host lines among it) to ours, noting pdsh's
    report of each failed host."""

    def __init__(self, stream, hosts: list[str]):
        super().__init__(daemon=True)
        self.stream, self.hosts, self.failed = stream, hosts, {}

    def run(self) -> None:
        out = sys.stderr.buffer
        for raw in iter(self.stream.readline, b""):
            out.write(raw)
            out.flush()
            if (hit := pdsh_exit(raw.decode(errors="replace"))) is not None:
                self.failed[pdsh_host(hit[0], self.hosts) or hit[0]] = hit[1]
        self.stream.close()


class Forwarder:
    """SIGINT (as SIGTERM), SIGTERM, SIGUSR1 -> every trainer of this launch, on every host.
    Sent from a thread (pdsh takes a moment); retried every 2 s until some trainer got it, while
    the run lasts (a signal during start-up must not be lost). The same signal again within
    SAME_REQUEST_S (pretrain/train/signals.py) is the same request: sent once."""

    RETRY_FOR_S = 300.0

    def __init__(self, hosts: list[str], launch_id: str, env: dict[str, str], args,
                 proc: subprocess.Popen):
        self.hosts, self.launch_id, self.env, self.args, self.proc = (hosts, launch_id, env,
                                                                      args, proc)

    def install(self) -> None:
        self.repeats = Repeats()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self.handle)

    def handle(self, signum, _frame) -> None:
        sig = signal.SIGTERM if signum == signal.SIGINT else signal.Signals(signum)
        if self.repeats.is_repeat(sig):
            return  # the same request again within SAME_REQUEST_S (relayed by a wrapper)
        where = "this node" if self.args.no_ssh else f"{len(self.hosts)} host(s) via pdsh"
        print(f"[launch] sending {sig.name} to the trainers of launch {self.launch_id} on "
              f"{where}", file=sys.stderr, flush=True)
        threading.Thread(target=self.deliver, args=(sig,), daemon=True).start()

    def deliver(self, sig: signal.Signals) -> None:
        deadline = time.monotonic() + self.RETRY_FOR_S
        while self.proc.poll() is None:
            if self.send_once(sig):
                return
            if time.monotonic() > deadline:
                print(f"[launch] found no trainer to send {sig.name} to", file=sys.stderr,
                      flush=True)
                return
            time.sleep(2)

    def send_once(self, sig: signal.Signals) -> bool:
        if self.args.no_ssh:
            return bool(signal_trainers(self.launch_id, sig))
        command = (f"env PYTHONPATH={shlex.quote(str(REPO))} {shlex.quote(sys.executable)} "
                   f"-m launch.signal_trainers {self.launch_id} {sig.name}")
        try:
            _, output = run_pdsh(self.hosts, command, self.env, self.args.ssh_port, 60)
        except LaunchError as e:
            print(f"[launch] {e}", file=sys.stderr, flush=True)
            return False
        sent = [x for lines in output.values() for x in lines
                if x.startswith("signalled ") and not x.endswith("(none)")]
        for line in sent:
            print(f"[launch] {line}", file=sys.stderr, flush=True)
        return bool(sent)


def run_hostfile(args) -> int:
    hosts = read_hostfile(args.hostfile)
    if args.no_ssh and (args.node_rank is None or args.master_addr is None):
        raise LaunchError("--no-ssh needs --node-rank and --master-addr")
    if args.node_rank is not None and not 0 <= args.node_rank < len(hosts):
        raise LaunchError(f"--node-rank {args.node_rank}: the hostfile has {len(hosts)} nodes")
    world_size = sum(hosts.values())
    cfg = validate_or_exit(args.config, args.overrides, world_size=world_size,
                           ranks_per_node=max(hosts.values()))
    if getattr(args, "print_config", False):
        return print_config(cfg)
    local_ranks = list(hosts.values())[args.node_rank or 0]
    env = train_env(omp_threads=args.omp_threads or default_omp_threads(local_ranks))
    launch_id = env[LAUNCH_ID_VAR] = uuid.uuid4().hex
    if getattr(args, "dry_run", False):
        cmd = deepspeed_command(args, hosts)
        print(f"# {world_size} rank(s) on {len(hosts)} node(s); ssh hosts get "
              f"{Path(cfg.run_dir) / 'deepspeed_env'}: {env_file_lines(env)!r}")
        print(shlex.join(["env", f"OMP_NUM_THREADS={env['OMP_NUM_THREADS']}",
                          f"PYTHONPATH={env['PYTHONPATH']}", *cmd]))
        return EXIT_OK
    cmd = deepspeed_command(args, hosts)
    if not args.no_ssh:
        aws = send_aws_env(env) if cfg.data.remote() or cfg.checkpoint.remote else []
        check_hosts(list(hosts), env, args.ssh_port, aws_names=aws)
    env["DS_ENV_FILE"] = str(write_env_file(Path(cfg.run_dir).resolve(), env))
    print(f"[launch] {world_size} rank(s) on {len(hosts)} node(s); OMP_NUM_THREADS="
          f"{env['OMP_NUM_THREADS']}; launch {launch_id}; {' '.join(cmd)}", file=sys.stderr,
          flush=True)
    proc = subprocess.Popen(cmd, env=env, start_new_session=True,
                            stderr=None if args.no_ssh else subprocess.PIPE)
    relay = None if args.no_ssh else Relay(proc.stderr, list(hosts))
    if relay:
        relay.start()
    Forwarder(list(hosts), launch_id, env, args, proc).install()
    code = normalize_code(proc.wait())
    if relay:
        relay.join(timeout=30)
        code = host_codes_exit(list(hosts), relay.failed, code)
    print(f"[launch] exit code {code} ({describe_exit(code)})", file=sys.stderr, flush=True)
    return code
