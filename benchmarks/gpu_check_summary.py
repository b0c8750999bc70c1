"""The summary of benchmarks/gpu_check.sh: one table from its steps' JSON results.

    python benchmarks/gpu_check_summary.py RESULTS.jsonl OUT.json DRY

RESULTS.jsonl has one line per step: {"step", "status", "seconds", "result"} where result is
the last JSON line the step printed (train_throughput / model_throughput / shard_throughput).
Writes OUT.json (device, date, every step) and prints the table.
"""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pretrain.exit_codes import EXIT_CONFIG, EXIT_OK  # noqa: E402


def pct(x) -> str:
    return "-" if x is None else f"{x:.1%}"


def num(x) -> str:
    return "-" if x is None else f"{x:,.0f}"


def train_rows(name: str, r: dict) -> list[list[str]]:
    c = r.get("config", {})
    what = (f"{r['model']} b{r['batch']}x{r['seq_len']} {c.get('precision')} "
            f"ZeRO-{c.get('zero_stage')}{' compile' if c.get('compile') else ''}")
    ours, plain = r.get("ours", {}), r.get("plain", {})
    rows = [[name, what, num(ours.get("tokens_per_sec")), pct(ours.get("mfu")),
             num(plain.get("tokens_per_sec")), pct(plain.get("mfu")),
             "-" if "ratio_vs_plain" not in r else f"{r['ratio_vs_plain']:.3f}"]]
    for lever in r.get("levers", []):
        if "error" in lever:
            rows.append(["  lever", lever["lever"], "not run: " + lever["error"][:50], "", "", "",
                         ""])
        else:
            rows.append(["  lever", lever["lever"], num(lever.get("tokens_per_sec")),
                         pct(lever.get("mfu")), num(lever.get("plain_tokens_per_sec")), "",
                         str(lever.get("ratio_vs_plain", "-"))])
    return rows


def model_rows(name: str, r: dict) -> list[list[str]]:
    rows = []
    for x in r.get("results", []):
        extra = " ".join(f"{k}={x[k]}" for k in x if k not in (
            "config", "batch", "seq_len", "step_time_ms", "tokens_per_sec", "flops_per_token",
            "mfu"))
        rows.append([name, f"model {x['config']} b{x['batch']}x{x['seq_len']} {extra}".strip(),
                     num(x.get("tokens_per_sec")), pct(x.get("mfu")), "", "", ""])
    for k, v in r.get("ratios", {}).items():
        rows.append([name, f"ratio {k}", "", "", "", "", str(v)])
    return rows


def shard_rows(name: str, r: dict) -> list[list[str]]:
    ratio = r.get("speedup_vs_1_worker")
    return [[name, f"data_tools shard --workers {r['workers']} ({r['corpus_mb']} MB, "
             f"{r['cores']} cores)", num(r.get("tokens_per_sec")), "", "", "",
             "-" if ratio is None else f"{ratio}x vs 1 worker"]]


def rows_for(step: dict) -> list[list[str]]:
    name, r = step["step"], step.get("result") or {}
    if step["status"] != "ok" and not r:
        return [[name, step["status"], "", "", "", "", ""]]
    note = [] if step["status"] == "ok" else [[name, step["status"] + " (partial)", "", "", "",
                                                "", ""]]
    if r.get("benchmark") == "train_throughput":
        return note + train_rows(name, r)
    if "results" in r:
        return note + model_rows(name, r)
    if "workers" in r:
        return note + shard_rows(name, r)
    return note + [[name, "no result line", "", "", "", "", ""]]


def table(rows: list[list[str]]) -> str:
    head = ["step", "what", "tokens/s", "MFU", "plain tok/s", "plain MFU", "ratio"]
    rows = [head] + rows
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def main() -> int:
    if len(sys.argv) != 4 or sys.argv[1] in ("-h", "--help"):  # gpu_check.sh calls it
        print(__doc__, file=sys.stdout if len(sys.argv) > 1 else sys.stderr)
        return EXIT_OK if len(sys.argv) > 1 and sys.argv[1] in ("-h", "--help") else EXIT_CONFIG
    results, out, dry = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1"
    steps = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    device = next((s["result"].get("device") for s in steps
                   if s.get("result") and s["result"].get("device")), None)
    summary = {"date": datetime.date.today().isoformat(), "dry_run": dry, "device": device,
               "steps": steps}
    out.write_text(json.dumps(summary, indent=1))
    rows = [row for s in steps for row in rows_for(s)]
    print(f"\n== gpu_check summary ({'DRY RUN on CPU: tiny sizes, not figures' if dry else ''}"
          f"{'' if dry else 'device: ' + str(device)}, {summary['date']})")
    print(table(rows))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
