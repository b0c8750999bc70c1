"""`arrowtrain COMMAND ...`: one entry point for data_tools, pretrain and launch.

Table-driven: each row names the words of a command, the module whose `main(argv, prog=...)`
runs it and a one-line summary. `data`, `launch`, `config` and `runs` are groups: their rows
dispatch to the group's own `python -m` entry (`data_tools`, `launch`, `arrowtrain.commands.
config`, `arrowtrain.commands.runs`) with the subcommand word kept, so `arrowtrain data shard X`
is `python -m data_tools shard X`; a group row with a module of its
own runs that module (`arrowtrain launch demo` is arrowtrain.demos.demo). A row marked
`optional` is shown and accepted only when its module exists (e.g. a command still on another
branch).

`arrowtrain --help` and `--version` import nothing but this table: no torch, no pyarrow."""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import sys
from dataclasses import dataclass

from arrowtrain import __version__
from pretrain.exit_codes import EXIT_CONFIG, EXIT_OK

PROG = "arrowtrain"


@dataclass(frozen=True)
class Command:
    words: str  # "data shard", "train"
    module: str  # whose main(argv, prog=...) runs it (groups: the group's module)
    summary: str
    optional: bool = False  # listed only when the module exists

    @property
    def group(self) -> str | None:
        first = self.words.split()[0]
        return first if first in GROUPS else None


# Groups dispatch to their package's own subcommand parser.
GROUPS = {"data": ("data_tools.__main__", "raw text -> tokenizer -> Arrow shards"),
          "launch": ("launch.__main__", "start, submit and watch runs"),
          "config": ("arrowtrain.commands.config", "the shipped configs and every config key"),
          "runs": ("arrowtrain.commands.runs", "look at runs side by side")}

COMMANDS: tuple[Command, ...] = (
    Command("data train-tokenizer", "data_tools.__main__",
            "train a byte-level BPE tokenizer on raw text"),
    Command("data shard", "data_tools.__main__",
            "tokenize raw text into Arrow IPC shards with a manifest"),
    Command("data validate", "data_tools.__main__",
            "check a shard folder: checksums, schema, token range"),
    Command("data inspect", "data_tools.__main__",
            "counts, lengths, val split and decoded samples of a shard folder"),
    Command("data copy", "data_tools.__main__",
            "copy a shard folder to or from object storage (s3://), sha256-verified"),
    Command("launch local", "launch.__main__", "N trainer ranks on this machine"),
    Command("launch slurm", "launch.__main__", "submit a self-requeueing SLURM job"),
    Command("launch hostfile", "launch.__main__",
            "multi-node without SLURM (DeepSpeed's launcher, pdsh/ssh)"),
    Command("launch status", "launch.__main__",
            "running / stopped / finished / failed, progress, ETA, checkpoint"),
    Command("launch demo", "arrowtrain.demos.demo",
            "the whole pipeline on this machine (what `make demo` runs)"),
    Command("train", "pretrain.train.__main__",
            "one rank of a training run (the launchers start it)"),
    Command("export", "arrowtrain.commands.export",
            "a run's checkpoint -> one .safetensors file (with its tokenizer) or an HF folder"),
    Command("sample", "arrowtrain.commands.sample", "text from a run or an exported .safetensors"),
    Command("plot", "arrowtrain.commands.plot",
            "loss, grad norm, lr, tokens/s of one or more runs -> PNG"),
    Command("model", "arrowtrain.commands.model",
            "a model config's shape, parameters and FLOPs per token"),
    Command("translate", "arrowtrain.commands.translate",
            "source lines -> target lines, beam search (encoder-decoder runs)"),
    Command("attention", "arrowtrain.commands.attention",
            "attention maps of a run: .npz + PNG grids"),
    Command("import-hf", "arrowtrain.commands.import_hf",
            "a local Hugging Face GPT-2/Llama folder -> an export .safetensors"),
    Command("plan", "arrowtrain.commands.plan",
            "will it fit, how long, what cost: memory per GPU and time, before the job starts"),
    Command("config list", "arrowtrain.commands.config",
            "the shipped run and model configs, one line of purpose each"),
    Command("config explain", "arrowtrain.commands.config",
            "type, default, allowed values and meaning of a config section or key"),
    Command("runs compare", "arrowtrain.commands.runs",
            "final losses, tokens, time, speed and differing config keys of runs"),
    Command("coord-check", "arrowtrain.commands.coord_check",
            "muP's coordinate check: activations vs width, standard and muP -> CSV, PNGs"),
    Command("sweep", "arrowtrain.commands.sweep",
            "a grid of ordinary runs (local or one SLURM job array) -> summary CSV, PNG"),
)


def _present(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def available(commands: tuple[Command, ...] | None = None) -> list[Command]:
    """The commands of this installation: optional ones only when their module exists."""
    return [c for c in (COMMANDS if commands is None else commands)
            if not c.optional or _present(c.module)]


def help_text(commands: list[Command]) -> str:
    width = max(len(c.words) for c in commands) + 2
    out = [f"usage: {PROG} COMMAND [ARGS ...]      ({PROG} COMMAND --help: its options)", "",
           "Distributed Transformer pretraining on Arrow shards and the DeepSpeed engine.", ""]
    section = object()
    for c in commands:
        if c.group != section:
            section = c.group
            out.append(f"{c.group} ({GROUPS[c.group][1]}):" if c.group else "runs and models:")
        out.append(f"  {c.words.ljust(width)}{c.summary}")
    out += ["", "options:", "  -h, --help   this list", "  --version    print the version", "",
            "The `python -m` forms work too: `python -m data_tools shard`, `python -m launch",
            "local`, `python -m pretrain.train`, `python -m arrowtrain.commands.export`, ..."]
    return "\n".join(out) + "\n"


def resolve(argv: list[str], commands: list[Command]) -> tuple[Command | None, list[str]]:
    """The command the words of argv name and the arguments left for it. A group word alone
    (`data`, `launch --help`, `data shrad`) goes to the group's own parser."""
    for n in (2, 1):
        words = " ".join(argv[:n])
        for c in commands:
            if c.words == words and (c.group is None or n == 2):
                return c, argv[n:]
    if argv and argv[0] in GROUPS:
        module, summary = GROUPS[argv[0]]
        return Command(argv[0], module, summary), argv[1:]
    return None, argv


def _call(cmd: Command, args: list[str]) -> int:
    mod = importlib.import_module(cmd.module)
    if cmd.group and cmd.module == GROUPS[cmd.group][0]:  # the group's parser sees the word
        prog, argv = f"{PROG} {cmd.group}", cmd.words.split()[1:] + args
    else:
        prog, argv = f"{PROG} {cmd.words}", args
    main = mod.main
    takes_prog = "prog" in inspect.signature(main).parameters
    code = main(argv, prog=prog) if takes_prog else main(argv)
    finish = getattr(mod, "exit_now", None)  # pretrain.train skips the interpreter's teardown
    if finish is not None:
        finish(code)
    return code


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    commands = available()
    if not argv or argv[0] in ("-h", "--help"):
        (sys.stdout if argv else sys.stderr).write(help_text(commands))
        return EXIT_OK if argv else EXIT_CONFIG
    if argv[0] == "--version":
        print(f"{PROG} {__version__}")
        return EXIT_OK
    cmd, rest = resolve(argv, commands)
    if cmd is None:
        names = sorted({c.words.split()[0] for c in commands})
        close = difflib.get_close_matches(argv[0], names, n=1)
        hint = f" (did you mean `{PROG} {close[0]}`?)" if close else ""
        print(f"{PROG}: unknown command {argv[0]!r}{hint}; commands: {', '.join(names)} "
              f"(`{PROG} --help` lists them)", file=sys.stderr)
        return EXIT_CONFIG
    return _call(cmd, rest)
