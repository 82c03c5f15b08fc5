"""The deployment table of a folder of runs: python experiments/deploy_table.py FOLDER."""

import json
import sys
from pathlib import Path

print("| pruning | teacher % | pruned % | recovered, validation % | recovered, test % | below teacher | "
      "non-zero params | FLOPs | zipped file | CPU speed-up @1 | @64 | ONNX matches | recover s |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for path in sorted(Path(sys.argv[1]).glob("*/results.json")):
    r = json.loads(path.read_text())
    d, t, rec = r["deployment"], r["teacher"]["acc"], r["recovered"]
    s, te = d["student"], d["teacher"]
    speed = d.get("speedup", {})
    print(f"| {path.parent.name} ({r['config']['pruning_method']}) | {100 * t:.2f} | {100 * r['pruned']['acc']:.2f} | "
          f"{100 * rec.get('val_acc', float('nan')):.2f} | {100 * rec['acc']:.2f} | {100 * (t - rec['acc']):.2f} | "
          f"{s['nonzero_params'] / te['params']:.2f}x | {d['flops_ratio']:.2f}x | {d['compressed_ratio']:.2f}x | "
          f"{speed.get('1', float('nan')):.2f}x | {speed.get('64', float('nan')):.2f}x | "
          f"{d.get('onnx', {}).get('matches', '-')} | {r['times']['recover']:.0f} |")
    for k, rd in enumerate(r["pruning"].get("rounds", [])):
        after = rd.get("recovered", rec)
        print(f"|   round {k + 1}: {100 * rd['ratio']:.1f}%, {rd['steps']} steps | | {100 * rd['pruned']['acc']:.2f} | | "
              f"{100 * after['acc']:.2f} | | | | | | | | |")
print(f"\nCPU threads for latency: {d['threads']}, {d.get('memory_format', 'contiguous')}; the 2:4 student's speed with sparse GPU kernels: not measured "
      f"(no GPU).")
