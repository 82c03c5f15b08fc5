"""What 2:4 sparsity buys on a GPU, measured with PyTorch's semi-structured sparse tensors (issue 15).

    python experiments/nm_gpu_speed.py --out experiments/results/nm_gpu_speed   # on a GPU machine

Each network is pruned by dfkd's own ``pruning=nm`` (2:4 along the input channels at each kernel
position, the first conv dense), then run three ways in bf16, channels_last, inference:

  dense conv    the pruned network as dfkd saves it: cuDNN convolutions that multiply the zeros too;
  dense GEMM    every pruned conv as one matrix product, im2col in (kh, kw, C) order, dense weights;
  2:4 GEMM      the same product with the weights as ``torch.sparse.to_sparse_semi_structured``
                tensors, the only 2:4 path PyTorch offers (it accelerates matrix products, not
                convolutions); with the cuSPARSELt backend and with CUTLASS.

Reported per network and batch: the median latency of each (torch.utils.benchmark, after warm-up),
and, at the largest batch, the matrix products alone (sum over the pruned layers of the median of
each layer's product, dense against 2:4): what the sparse cores give before im2col's copies.
The 2:4 path's logits are checked against the dense conv's (top-1 agreement, largest difference
relative to the largest logit). The weights are a random initialization with BN statistics
gathered on noise: speed depends on the shapes and the pattern, not on the values.

``--device cpu`` checks the GEMM path against the convolutions in float32 (no sparse kernels on a CPU;
tests/test_nm_gemm.py does the same for single layers). Results go to OUT/results.json and
OUT/results.md after each network. The products alone are timed with every pruned conv's im2col
matrix at the largest batch in memory at once (tens of GB for ResNet-50 at batch 1024: fine on an
H200; give smaller GPUs smaller ``--batches``). Each figure is one timing run: the same product
measured twice (``--probe`` measures the shapes the two networks share twice) differed by up to
1.8x on the H200, so compare ranges, not single cells."""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import benchmark

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dfkd.models import create  # noqa: E402
from dfkd.pruning import NM, make_permanent  # noqa: E402
from dfkd.pruning.nm import nm_mask  # noqa: E402


class GemmConv(nn.Module):
    """A convolution as one matrix product: im2col with K in (kh, kw, C) order, the order of dfkd's
    N:M groups, so each weight row keeps its 2:4 pattern along K. ``sparse`` makes the weight a
    semi-structured sparse tensor."""

    def __init__(self, conv: nn.Conv2d, sparse: bool) -> None:
        super().__init__()
        assert conv.groups == 1 and conv.dilation == (1, 1), "grouped or dilated convs stay convs"
        self.kernel, self.stride, self.padding = conv.kernel_size, conv.stride, conv.padding
        weight = conv.weight.detach().permute(0, 2, 3, 1).reshape(conv.out_channels, -1).contiguous()
        self.weight = torch.sparse.to_sparse_semi_structured(weight) if sparse else weight
        self.bias = None if conv.bias is None else conv.bias.detach()

    def columns(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        n, c, h, w = x.shape
        if self.kernel == (1, 1) and self.padding == (0, 0):
            x = x[:, :, ::self.stride[0], ::self.stride[1]]
            return x.permute(0, 2, 3, 1).reshape(-1, c), x.shape[2], x.shape[3]
        cols = F.unfold(x, self.kernel, padding=self.padding, stride=self.stride)  # (N, C*kh*kw, L)
        ho = (h + 2 * self.padding[0] - self.kernel[0]) // self.stride[0] + 1
        wo = (w + 2 * self.padding[1] - self.kernel[1]) // self.stride[1] + 1
        k = self.kernel[0] * self.kernel[1]
        return cols.view(n, c, k, -1).permute(0, 3, 2, 1).reshape(-1, k * c), ho, wo

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cols, ho, wo = self.columns(x)
        y = F.linear(cols, self.weight, self.bias)
        return y.view(x.shape[0], ho, wo, -1).permute(0, 3, 1, 2)  # channels_last memory


def pruned(name: str, width: int) -> tuple[nn.Module, list[str]]:
    """dfkd's 2:4 student of a random ``name`` network, BN statistics gathered on noise."""
    torch.manual_seed(0)
    model = create(name, num_classes=10, width=width)
    pruner = NM()
    pruner(model)
    make_permanent(model)
    pruner.check_kept(model)
    with torch.no_grad():
        model.train()
        for _ in range(4):
            model(torch.randn(256, 3, 32, 32))
    layers = [n for n, m in pruner.pruned_layers(model.eval()) if isinstance(m, nn.Conv2d)]
    return model, layers


def as_gemm(model: nn.Module, layers: list[str], sparse: bool) -> nn.Module:
    gemm = copy.deepcopy(model)
    for name in layers:
        parent, _, attr = name.rpartition(".")
        owner = gemm.get_submodule(parent) if parent else gemm
        setattr(owner, attr, GemmConv(getattr(owner, attr), sparse))
    return gemm


def median_ms(fn, x: torch.Tensor, seconds: float) -> float:
    with torch.no_grad():
        for _ in range(3):
            fn(x)
        timer = benchmark.Timer(stmt="fn(x)", globals={"fn": fn, "x": x})
        return 1e3 * timer.blocked_autorange(min_run_time=seconds).median


def agreement(reference: torch.Tensor, other: torch.Tensor) -> dict:
    reference, other = reference.float(), other.float()
    return {"top1_agreement": float((reference.argmax(1) == other.argmax(1)).float().mean()),
            "max_rel_diff": float((reference - other).abs().max() / reference.abs().max())}


def cpu_check(name: str, width: int) -> dict:
    model, layers = pruned(name, width)
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        return {"net": f"{name} w{width}", "layers": len(layers),
                **agreement(model(x), as_gemm(model, layers, sparse=False)(x))}


def gpu_rows(name: str, width: int, batches: list[int], seconds: float, dev: str = "cuda",
             dtype: torch.dtype = torch.bfloat16) -> list[dict]:
    model, layers = pruned(name, width)
    model = model.to(dev, dtype).to(memory_format=torch.channels_last)
    ways = {"dense conv": model, "dense GEMM": as_gemm(model, layers, sparse=False)}
    default = torch.sparse.SparseSemiStructuredTensor._FORCE_CUTLASS
    for backend, cutlass in (("cuSPARSELt", False), ("CUTLASS", True)):
        torch.sparse.SparseSemiStructuredTensor._FORCE_CUTLASS = cutlass
        try:
            ways[f"2:4 GEMM {backend}"] = as_gemm(model, layers, sparse=True)
        except Exception as err:  # a backend missing from this build: say so, measure the rest
            print(f"{name} w{width}: 2:4 with {backend} unavailable: {err}", flush=True)
        finally:
            torch.sparse.SparseSemiStructuredTensor._FORCE_CUTLASS = default
    rows = []
    for batch in batches:
        x = torch.randn(batch, 3, 32, 32, device=dev, dtype=dtype).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            reference = model(x)
            row = {"net": f"{name} w{width}", "batch": batch, "pruned_convs": len(layers)}
            for way, net in list(ways.items()):
                try:
                    row[f"{way} ms"] = median_ms(net, x, seconds)
                    if way.startswith("2:4"):
                        row[f"{way} check"] = agreement(reference, net(x))
                except Exception as err:  # a kernel this build lacks: say so, measure the rest
                    print(f"{name} w{width} batch {batch}: {way} failed: {err}", flush=True)
                    del ways[way]
        rows.append(row)
        print(json.dumps(row), flush=True)
    # the matrix products alone, at the largest batch: what the sparse cores give before im2col
    batch = batches[-1]
    x = torch.randn(batch, 3, 32, 32, device=dev, dtype=dtype).contiguous(memory_format=torch.channels_last)
    shapes, inputs = {}, {}
    hooks = [model.get_submodule(n).register_forward_hook(
        lambda mod, args, out, n=n: inputs.__setitem__(n, args[0])) for n in layers]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    dense_ms, totals = {}, {}
    for n in layers:
        layer = ways["dense GEMM"].get_submodule(n)
        cols = layer.columns(inputs[n])[0].contiguous()
        inputs[n] = cols
        shapes[n] = [*cols.shape, layer.weight.shape[0]]
        dense_ms[n] = median_ms(lambda c, w=layer.weight: F.linear(c, w), cols, seconds / 4)
    for backend in [w for w in ways if w.startswith("2:4")]:
        sparse_ms = sum(median_ms(lambda c, w=ways[backend].get_submodule(n).weight: F.linear(c, w), inputs[n],
                                  seconds / 4) for n in layers)
        dense = sum(dense_ms.values())
        totals[backend] = {"dense GEMMs ms": dense, "2:4 GEMMs ms": sparse_ms, "speed-up": dense / sparse_ms}
    rows[-1]["GEMMs alone"] = totals
    rows[-1]["GEMM shapes (M, K, N)"] = shapes
    print(json.dumps({"net": f"{name} w{width}", "batch": batch, "GEMMs alone": totals}), flush=True)
    return rows


def probe(name: str, width: int, batch: int, seconds: float, dev: str = "cuda", dtype: torch.dtype = torch.bfloat16,
          control=((8192, 8192, 8192), (16384, 4096, 4096))) -> list[dict]:
    """The matrix products alone, both ways round: ``F.linear(X, W)`` (X: M x K, the im2col rows, as
    the GEMM path runs it) and ``torch.mm(W, Xt)`` (Xt: K x M contiguous, the sparse operand first,
    cuSPARSELt's own layout), dense against 2:4, for each distinct pruned-conv shape of ``name`` at
    ``batch``, and for two large square products as a control that the sparse kernels work here."""
    model, layers = pruned(name, width)
    shapes = {}
    hooks = [model.get_submodule(n).register_forward_hook(
        lambda mod, args, out, n=n: shapes.__setitem__(n, (out.shape[0] * out.shape[2] * out.shape[3],
                                                           mod.weight[0].numel(), mod.out_channels)))
        for n in layers]
    with torch.no_grad():
        model(torch.randn(batch, 3, 32, 32))
    for h in hooks:
        h.remove()
    rows = []
    for m, k, n in list(control) + sorted(set(shapes.values()), key=lambda s: s[1] * s[2]):
        weight = torch.randn(n, k, device=dev, dtype=dtype)
        weight = weight * nm_mask(weight, 2, 4)
        sparse = torch.sparse.to_sparse_semi_structured(weight)
        x = torch.randn(m, k, device=dev, dtype=dtype)
        xt = x.t().contiguous()
        times = {"dense linear ms": median_ms(lambda a: F.linear(a, weight), x, seconds),
                 "2:4 linear ms": median_ms(lambda a: F.linear(a, sparse), x, seconds),
                 "dense mm ms": median_ms(lambda a: torch.mm(weight, a), xt, seconds),
                 "2:4 mm ms": median_ms(lambda a: torch.mm(sparse, a), xt, seconds)}
        rows.append({"shape (M, K, N)": [m, k, n], "control": (m, k, n) in control,
                     "layers": sum(s == (m, k, n) for s in shapes.values()), **times,
                     "dense TFLOP/s": 2 * m * k * n / times["dense mm ms"] / 1e9})
        print(json.dumps(rows[-1]), flush=True)
        del x, xt
    return rows


def probe_markdown(rows: list[dict], header: str) -> str:
    lines = [header, "", "| GEMM (M, K, N) | layers | dense linear ms | 2:4 linear ms | speed-up | dense mm (W @ Xt) ms "
             "| 2:4 mm ms | speed-up | dense TFLOP/s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {tuple(r['shape (M, K, N)'])} | {'control' if r['control'] else r['layers']} | "
                     f"{r['dense linear ms']:.3f} | {r['2:4 linear ms']:.3f} | "
                     f"{r['dense linear ms'] / r['2:4 linear ms']:.2f}x | {r['dense mm ms']:.3f} | {r['2:4 mm ms']:.3f} | "
                     f"{r['dense mm ms'] / r['2:4 mm ms']:.2f}x | {r['dense TFLOP/s']:.0f} |")
    return "\n".join(lines) + "\n"


def markdown(rows: list[dict], header: str) -> str:
    lines = [header, "", "| network | batch | dense conv ms | dense GEMM ms | 2:4 GEMM ms, cuSPARSELt | "
             "2:4 GEMM ms, CUTLASS | 2:4 (best) against dense conv | 2:4 against dense GEMM | top-1 agreement |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        sparse = [r.get(f"2:4 GEMM {b} ms") for b in ("cuSPARSELt", "CUTLASS")]
        best = min((s for s in sparse if s is not None), default=None)
        check = min((r[k]["top1_agreement"] for k in r if k.endswith("check")), default=None)
        dense = [r.get("dense conv ms"), r.get("dense GEMM ms")]
        ratios = ["-" if d is None or best is None else f"{d / best:.2f}x" for d in dense]
        lines.append(f"| {r['net']} | {r['batch']} | "
                     + " | ".join("-" if t is None else f"{t:.3f}" for t in dense + sparse)
                     + f" | {' | '.join(ratios)} | {'-' if check is None else f'{check:.3f}'} |")
    gemm = [(r["net"], r["batch"], b, t) for r in rows for b, t in r.get("GEMMs alone", {}).items()]
    if gemm:
        lines += ["", "| network | batch | backend | pruned convs' GEMMs, dense ms | the same, 2:4 ms | speed-up |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {n} | {b} | {k.removeprefix('2:4 GEMM ')} | {t['dense GEMMs ms']:.3f} | {t['2:4 GEMMs ms']:.3f} "
                  f"| {t['speed-up']:.2f}x |" for n, b, k, t in gemm]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("experiments/results/nm_gpu_speed"))
    parser.add_argument("--nets", nargs="+", default=["resnet18:16", "resnet18:64", "resnet50:64"],
                        help="ARCH:WIDTH, built from dfkd's registry")
    parser.add_argument("--batches", nargs="+", type=int, default=[64, 256, 1024])
    parser.add_argument("--seconds", type=float, default=1.0, help="timing per measurement")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--probe", action="store_true",
                        help="the matrix products alone, both ways round, at the largest batch (probe.json/.md)")
    args = parser.parse_args()
    nets = [(n.split(":")[0], int(n.split(":")[1])) for n in args.nets]
    if args.device == "cpu":
        for name, width in nets:
            print(json.dumps(cpu_check(name, width)))
        return
    if not torch.cuda.is_available():
        sys.exit("nm_gpu_speed: no CUDA device here; 2:4 kernels need an Ampere or later GPU "
                 "(--device cpu checks the GEMM path only).")
    torch.backends.cudnn.benchmark = True
    args.out.mkdir(parents=True, exist_ok=True)
    header = (f"{torch.cuda.get_device_name()}, torch {torch.__version__}, bf16, channels_last, inference; "
              f"median latency (torch.utils.benchmark, {args.seconds} s per figure); "
              f"command: python experiments/nm_gpu_speed.py {' '.join(sys.argv[1:])}")
    if args.probe:
        rows = []
        for name, width in nets:
            rows += probe(name, width, args.batches[-1], args.seconds)
            (args.out / "probe.json").write_text(json.dumps({"setup": header, "rows": rows}, indent=1))
            (args.out / "probe.md").write_text(probe_markdown(rows, header))
        print(probe_markdown(rows, header))
        return
    rows = []
    for name, width in nets:
        rows += gpu_rows(name, width, args.batches, args.seconds)
        (args.out / "results.json").write_text(json.dumps({"setup": header, "python": platform.python_version(),
                                                          "rows": rows}, indent=1))
        (args.out / "results.md").write_text(markdown(rows, header))
    print(markdown(rows, header))


if __name__ == "__main__":
    main()
