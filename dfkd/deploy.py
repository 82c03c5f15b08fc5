"""Stage 5: what the student buys in deployment, measured (conf/deploy): parameters (all and
non-zero), FLOPs (torch's own counter, at batch 1), the saved file's size (dense, and compressed:
zeros compress), CPU latency at each batch size (median of repeated runs after warm-up, threads
stated), for the teacher and the recovered student. The student is exported as student.pt2
(torch.export) and student.onnx, which load without dfkd, and ONNX Runtime's outputs are checked
against PyTorch's on a batch."""

from __future__ import annotations

import copy
import io
import logging
import statistics
import time
import zlib
from pathlib import Path

import torch
from torch import nn

from dfkd.errors import check, first_line
from dfkd.pruning.structured import count

log = logging.getLogger(__name__)

ONNX_TOLERANCE = 1e-3  # largest |ONNX Runtime - PyTorch| logit, relative to the logits' scale


def file_sizes(model: nn.Module) -> dict:
    """Bytes of the state dict as torch.save writes it, and compressed with zlib (level 6)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    raw = buffer.getvalue()
    return {"file_bytes": len(raw), "compressed_bytes": len(zlib.compress(raw, 6))}


def latency_ms(models: list[nn.Module], x: torch.Tensor, min_runs: int = 7, max_runs: int = 50,
               min_seconds: float = 1.0, max_seconds: float = 10.0) -> tuple[list[float], int]:
    """Median wall time of one forward pass of each model, in milliseconds, and the number of
    timed passes each it rests on. The models take turns
    (after two warm-up passes each), so that a drift of the machine (clock, caches, other load)
    falls on all of them alike: at least ``min_runs`` turns and ``min_seconds``, at most
    ``max_runs`` turns or ``max_seconds`` (which may leave fewer than ``min_runs`` turns)."""
    times: list[list[float]] = [[] for _ in models]
    with torch.inference_mode():
        for model in models:
            for _ in range(2):
                model(x)
        while len(times[0]) < max_runs:
            for model, spent in zip(models, times):
                start = time.perf_counter()
                model(x)
                spent.append(time.perf_counter() - start)
            total = sum(map(sum, times))
            if (len(times[0]) >= min_runs and total >= min_seconds) or total >= max_seconds:
                break
    return [1000 * statistics.median(t) for t in times], len(times[0])


class Deployment:
    """What conf/deploy builds; ``__call__(teacher, student, image_shape, out)`` measures both
    models on the CPU and exports the student into ``out``."""

    def __init__(self, latency: bool = True, batch_sizes=(1, 64), threads: int | None = None,
                 export: bool = True, onnx: bool = True, channels_last: bool = True) -> None:
        sizes = list(batch_sizes or [])
        check(all(isinstance(b, int) and b >= 1 for b in sizes),
              f"deploy.batch_sizes={sizes} must be whole numbers >= 1, e.g. [1, 64].")
        check(threads is None or (isinstance(threads, int) and threads >= 1),
              f"deploy.threads={threads!r} must be null (torch's default) or a whole number >= 1.")
        self.latency, self.batch_sizes, self.threads = bool(latency), sizes, threads
        self.export, self.onnx, self.channels_last = bool(export), bool(onnx), bool(channels_last)

    @staticmethod
    def measure(model: nn.Module, image_shape) -> dict:
        """Parameters, FLOPs and file sizes of ``model``."""
        model = on_cpu(model)
        example = torch.zeros(1, *image_shape)
        return {"params": count(model, example, "params"),
                "nonzero_params": sum(int((p != 0).sum()) for p in model.parameters()),
                "flops": count(model, example, "flops"), **file_sizes(model)}

    def __call__(self, teacher: nn.Module, student: nn.Module, image_shape, out: Path) -> dict:
        found = {"device": "cpu", "teacher": self.measure(teacher, image_shape),
                 "student": self.measure(student, image_shape)}
        if self.latency:
            threads = torch.get_num_threads()
            torch.set_num_threads(self.threads or threads)
            try:
                found["threads"] = torch.get_num_threads()
                layout = torch.channels_last if self.channels_last and len(image_shape) == 3 else torch.contiguous_format
                found["memory_format"] = "channels_last" if layout is torch.channels_last else "contiguous"
                models = [on_cpu(m).to(memory_format=layout) for m in (teacher, student)]
                generator = torch.Generator().manual_seed(0)
                for b in self.batch_sizes:
                    x = torch.randn(b, *image_shape, generator=generator).contiguous(memory_format=layout)
                    times, runs = latency_ms(models, x)
                    found.setdefault("latency_runs", {})[str(b)] = runs  # timed passes per median
                    for who, ms in zip(("teacher", "student"), times):
                        found[who].setdefault("latency_ms", {})[str(b)] = ms
            finally:
                torch.set_num_threads(threads)
        t, s = found["teacher"], found["student"]
        found["flops_ratio"] = s["flops"] / t["flops"]
        found["params_ratio"] = s["params"] / t["params"]
        found["compressed_ratio"] = s["compressed_bytes"] / t["compressed_bytes"]
        if self.latency:
            found["speedup"] = {b: t["latency_ms"][b] / s["latency_ms"][b] for b in s["latency_ms"]}
        student = on_cpu(student)
        if self.export:
            found["export"] = export_program(student, image_shape, Path(out) / "student.pt2")
        if self.onnx:
            found["onnx"] = export_onnx(student, image_shape, Path(out) / "student.onnx")
        return found


def on_cpu(model: nn.Module) -> nn.Module:
    """A copy of ``model`` for measuring and exporting: on the CPU, in eval mode, contiguous."""
    return copy.deepcopy(model).cpu().eval().to(memory_format=torch.contiguous_format)


def _batch_dim():
    return torch.export.Dim("batch", min=1, max=4096)


def export_program(model: nn.Module, image_shape, path: Path) -> dict:
    """student.pt2: ``torch.export.load(path).module()`` runs it without dfkd. A failure is
    reported (results.json and a warning), never fatal: student.pt is already saved."""
    example = torch.zeros(2, *image_shape)
    try:
        program = torch.export.export(model, (example,), dynamic_shapes=({0: _batch_dim()},))
        torch.export.save(program, str(path))
    except Exception as err:  # noqa: BLE001 - any exporter failure is reported, not fatal
        return {"error": first_line(err)}
    return {"path": str(path), "bytes": path.stat().st_size}


def export_onnx(model: nn.Module, image_shape, path: Path, batch: int = 8) -> dict:
    """student.onnx, checked: ONNX Runtime's logits on a random batch must match PyTorch's."""
    import numpy as np

    example = torch.zeros(2, *image_shape)
    for name in ("onnx_ir", "onnxscript", "torch.onnx"):  # their INFO lines would flood run.log
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        import onnxruntime as ort

        # the weights inside the one file (external_data=False; ONNX's protobuf limit is 2 GB), so that
        # student.onnx runs wherever it is copied, without a student.onnx.data beside it
        torch.onnx.export(model, (example,), str(path), dynamic_shapes=({0: _batch_dim()},), dynamo=True,
                          verbose=False, external_data=False)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        x = torch.randn(batch, *image_shape, generator=torch.Generator().manual_seed(1))
        with torch.inference_mode():
            expected = model(x).numpy()
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    except Exception as err:  # noqa: BLE001
        return {"error": first_line(err)}
    difference = float(np.abs(got - expected).max())
    scale = float(np.abs(expected).max()) or 1.0
    return {"path": str(path), "bytes": path.stat().st_size, "max_abs_difference": difference,
            "matches": bool(difference <= ONNX_TOLERANCE * scale and (got.argmax(1) == expected.argmax(1)).all())}
