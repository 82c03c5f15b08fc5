"""The deployment table of a folder of runs: python experiments/deploy_table.py FOLDER [TABLE].

With TABLE (the table as it was), a run whose results.json is not in FOLDER keeps its rows from
TABLE, so that re-running one method on a fresh machine does not drop the others."""

import json
import sys
from pathlib import Path

from tables import cells, earlier_rows

HEADER = ("| pruning | teacher % | pruned % | recovered, validation % | recovered, test % | below teacher | "
          "non-zero params | FLOPs | zipped file | CPU speed-up @1 | @64 | latency timed | ONNX matches | recover s |")
COLUMNS = HEADER.count("|")


def rows(path: Path) -> list[str]:
    r = json.loads(path.read_text())
    d, t, rec = r["deployment"], r["teacher"]["acc"], r["recovered"]
    s, te = d["student"], d["teacher"]
    speed = d.get("speedup", {})
    timed = f"{d['threads']} thread{'s' * (d['threads'] != 1)}, {d.get('memory_format', 'contiguous')}"
    out = [f"| {path.parent.name} ({r['config']['pruning_method']}) | {100 * t:.2f} | {100 * r['pruned']['acc']:.2f} | "
           f"{100 * rec.get('val_acc', float('nan')):.2f} | {100 * rec['acc']:.2f} | {100 * (t - rec['acc']):.2f} | "
           f"{s['nonzero_params'] / te['params']:.2f}x | {d['flops_ratio']:.2f}x | {d['compressed_ratio']:.2f}x | "
           f"{speed.get('1', float('nan')):.2f}x | {speed.get('64', float('nan')):.2f}x | {timed} | "
           f"{d.get('onnx', {}).get('matches', '-')} | {r['times']['recover']:.0f} |"]
    for k, rd in enumerate(r["pruning"].get("rounds", [])):
        after = rd.get("recovered", rec)
        out.append(f"|   round {k + 1}: {100 * rd['ratio']:.1f}%, {rd['steps']} steps | | {100 * rd['pruned']['acc']:.2f} | | "
                   f"{100 * after['acc']:.2f} | | | | | | | | | |")
    return out


blocks = earlier_rows(Path(sys.argv[2]), HEADER) if len(sys.argv) > 2 else {}
for path in Path(sys.argv[1]).glob("*/results.json"):
    block = rows(path)
    blocks[cells(block[0])[0]] = block
print(HEADER)
print("|---" * (COLUMNS - 1) + "|")
for name in sorted(blocks):
    print("\n".join(blocks[name]))
print("\nLatency: median of repeated CPU runs after warm-up (deploy.threads, deploy.channels_last); the 2:4 "
      "student's speed with sparse GPU kernels: not measured (no GPU).")
