"""CPU latency of structured pruning at full width (issue 15): each built-in CIFAR architecture at
its standard width, untrained (latency does not depend on the weights), pruned by
conf/pruning/structured.yaml's defaults to RATIO of its FLOPs, timed by dfkd.deploy at batch 1 and
64 with THREADS CPU threads, both models in channels_last (deploy.channels_last's default). No accuracy here: experiments/cifar10_deploy.sh measures that on the
CPU-reduced setting.

    .venv/bin/python experiments/structured_latency.py [RATIO=0.5] [THREADS=1] [COUPLED=prune]
Table: experiments/results/structured_latency/results.md (about 3 minutes on 2 idle cores); with
COUPLED=keep (pruning.coupled=keep: residual streams whole), results_coupled_keep.md."""

import sys
from pathlib import Path

import torch

from dfkd.deploy import Deployment
from dfkd.models import cifar
from dfkd.pruning import Structured

ratio = float(sys.argv[1]) if len(sys.argv) > 1 else 0.5
threads = int(sys.argv[2]) if len(sys.argv) > 2 else 1
coupled = sys.argv[3] if len(sys.argv) > 3 else "prune"
models = {"resnet18": lambda: cifar.resnet18(), "resnet50": lambda: cifar.resnet50(),
          "mobilenetv2": lambda: cifar.mobilenetv2(), "vgg16": lambda: cifar.vgg16(),
          "resnet18 width 16": lambda: cifar.resnet18(width=16)}
kept = ", residual streams whole: pruning.coupled=keep" if coupled == "keep" else ""
lines = [f"Structured pruning ({ratio:.0%} of FLOPs, uniform L1 channels, classifier dense{kept}), CPU, "
         f"{threads} thread(s), "
         f"channels_last (both models), torch {torch.__version__}; median ms of repeated runs after warm-up.", "",
         "| model | params teacher -> student | FLOPs teacher -> student | ms @1 teacher -> student | speed-up @1 | "
         "ms @64 teacher -> student | speed-up @64 |", "|---|---|---|---|---|---|---|"]
measure = Deployment(batch_sizes=[1, 64], threads=threads, export=False, onnx=False)
for name, make in models.items():
    torch.manual_seed(0)
    teacher = make().eval()
    student = Structured(ratio, coupled=coupled)(make().eval(), torch.zeros(1, 3, 32, 32))
    d = measure(teacher, student, (3, 32, 32), Path("."))
    t, s = d["teacher"], d["student"]
    lines.append(f"| {name} | {t['params'] / 1e6:.2f}M -> {s['params'] / 1e6:.2f}M | {t['flops'] / 1e6:.0f}M -> "
                 f"{s['flops'] / 1e6:.0f}M | {t['latency_ms']['1']:.2f} -> {s['latency_ms']['1']:.2f} | "
                 f"{d['speedup']['1']:.2f}x | {t['latency_ms']['64']:.1f} -> {s['latency_ms']['64']:.1f} | "
                 f"{d['speedup']['64']:.2f}x |")
    print(lines[-1], flush=True)
out = Path(__file__).parent / "results" / "structured_latency"
out.mkdir(parents=True, exist_ok=True)
(out / ("results.md" if coupled == "prune" else f"results_coupled_{coupled}.md")).write_text("\n".join(lines) + "\n")
print("\n".join(lines))
