"""Deployment figures: what the student buys is measured, and the exported student runs without dfkd."""

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from dfkd import pruning
from dfkd.deploy import Deployment
from dfkd.errors import DfkdError
from dfkd.models import DigitsCNN
from dfkd.run import run


def _model():
    torch.manual_seed(0)
    return DigitsCNN(width=16).eval()


def test_figures_tell_structured_from_unstructured_pruning(tmp_path):
    teacher = _model()
    masked = pruning.make_permanent(pruning.prune(_model(), 0.9))
    thin = pruning.Structured(0.5)(_model(), torch.zeros(1, 1, 8, 8))
    measure = Deployment(latency=False, export=False, onnx=False)
    dense, sparse, small = (measure.measure(m, (1, 8, 8)) for m in (teacher, masked, thin))
    assert sparse["params"] == dense["params"] and sparse["flops"] == dense["flops"]  # same shapes
    assert sparse["nonzero_params"] < 0.15 * dense["params"]
    assert sparse["compressed_bytes"] < 0.5 * dense["compressed_bytes"] and sparse["file_bytes"] == dense["file_bytes"]
    assert small["flops"] <= 0.5 * dense["flops"] * 1.001 and small["params"] < 0.6 * dense["params"]
    assert small["file_bytes"] < 0.6 * dense["file_bytes"]
    # torch's counter: 2 FLOPs a multiply-add, at each output position (maps of 8x8, 8x8, 4x4, then 1)
    positions = (64, 64, 16, 1)
    assert dense["flops"] == 2 * sum(layer.weight.numel() * n for (_, layer), n in zip(pruning.prunable(teacher), positions))


def test_latency_is_measured_at_each_batch_size_with_the_threads_stated(tmp_path):
    found = Deployment(batch_sizes=[1, 4], threads=1, export=False, onnx=False)(_model(), _model(), (1, 8, 8), tmp_path)
    assert found["threads"] == 1 and set(found["speedup"]) == {"1", "4"}
    assert all(runs >= 7 for runs in found["latency_runs"].values())  # the medians say what they rest on
    assert found["memory_format"] == "channels_last"
    for who in ("teacher", "student"):
        assert all(0 < ms < 1000 for ms in found[who]["latency_ms"].values())
    assert torch.get_num_threads() >= 1


def test_the_exported_student_runs_without_dfkd_and_onnx_runtime_agrees(tmp_path):
    student = pruning.Structured(0.5)(_model(), torch.zeros(1, 1, 8, 8))
    found = Deployment(latency=False)(_model(), student, (1, 8, 8), tmp_path)
    assert found["onnx"]["matches"] and found["onnx"]["max_abs_difference"] < 1e-3
    x = torch.randn(5, 1, 8, 8)
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        expected = student(x)
    code = ("import sys, torch; m = torch.export.load(sys.argv[1]).module(); x = torch.load(sys.argv[2]); "
            "torch.save(m(x), sys.argv[3]); assert not any(k.startswith('dfkd') for k in sys.modules)")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "student.pt2"), str(tmp_path / "x.pt"),
                    str(tmp_path / "y.pt")], check=True, cwd=tmp_path)
    assert torch.allclose(torch.load(tmp_path / "y.pt"), expected, atol=1e-5)
    # student.onnx alone, copied elsewhere, runs: its weights are inside it
    import onnxruntime as ort

    (tmp_path / "elsewhere").mkdir()
    alone = tmp_path / "elsewhere" / "student.onnx"
    alone.write_bytes((tmp_path / "student.onnx").read_bytes())
    session = ort.InferenceSession(str(alone), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert torch.allclose(torch.from_numpy(got), expected, atol=1e-4)


def test_a_failed_export_is_reported_not_fatal(tmp_path):
    class Unexportable(torch.nn.Module):
        def forward(self, x):
            return torch.from_numpy(x.numpy()).flatten(1)[:, :10]  # leaves torch: no graph to export

    found = Deployment(latency=False)(_model(), Unexportable(), (1, 8, 8), tmp_path)
    assert "error" in found["export"]
    from dfkd.report import deployment_warnings

    assert any("Exporting the student (export) failed" in w for w in deployment_warnings(found))


def test_a_deployment_measurement_that_fails_keeps_the_run_and_says_so(make_cfg, tmp_path, monkeypatch):
    def broken(self, teacher, student, image_shape, out):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(Deployment, "__call__", broken)
    results = run(make_cfg("deploy=default", "recovery=none"))
    assert results["deployment_error"] == "ZeroDivisionError: division by zero" and "deployment" not in results
    assert any("Measuring the student for deployment failed" in w and "deploy=none" in w for w in results["warnings"])
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["recovered"]["acc"] == results["recovered"]["acc"] and (tmp_path / "student.pt").is_file()


def test_latency_stops_at_max_seconds_even_before_min_runs():
    calls = []

    class Slow(torch.nn.Module):
        def forward(self, x):
            calls.append(1)
            return x

    from dfkd.deploy import latency_ms

    _, runs = latency_ms([Slow()], torch.zeros(1), min_runs=7, max_seconds=0.0)
    assert len(calls) == 2 + 1 and runs == 1  # two warm-up passes, then one timed turn: past max_seconds


@pytest.mark.parametrize("setting", ["deploy.batch_sizes=[0]", "deploy.threads=0"])
def test_bad_deploy_settings_are_refused_before_work(make_cfg, setting):
    with pytest.raises(DfkdError, match=setting.split("=")[0].replace(".", r"\.")):
        run(make_cfg(setting))


@pytest.mark.slow
def test_a_structured_run_reports_what_it_buys(make_cfg, tmp_path):
    results = run(make_cfg("pruning=structured", "deploy=default", "deploy.batch_sizes=[1,8]"))
    d = results["deployment"]
    assert d["flops_ratio"] <= 0.5 * 1.001 and d["onnx"]["matches"] and "path" in d["export"]
    assert results["recovered"]["acc"] >= results["pruned"]["acc"]
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["deployment"]["student"]["params"] < on_disk["deployment"]["teacher"]["params"]
    assert on_disk["pruning"]["removed"] >= 0.5 - 1e-3
    for name in ("student.pt", "student.pt2", "student.onnx"):
        assert (tmp_path / name).is_file(), name
    # results.json says how images reach the exported student: raw digits (scikit-learn's pixels 0-16,
    # no dfkd code), scaled to [0, 1] and normalized as "input" says, are classified as by the run
    from sklearn.datasets import load_digits

    spec = on_disk["input"]
    assert spec["shape"] == [1, 8, 8] and spec["normalization"] == "measured"
    pixels, labels = load_digits(return_X_y=True)
    x = torch.tensor(pixels / 16.0, dtype=torch.float32).view(-1, *spec["shape"])
    student = torch.export.load(str(tmp_path / "student.pt2")).module()
    mean, std = (torch.tensor(spec[k]).view(-1, 1, 1) for k in ("mean", "std"))
    with torch.no_grad():
        normalized = (student((x - mean) / std).argmax(1).numpy() == labels).mean()
        raw = (student(x).argmax(1).numpy() == labels).mean()
    assert normalized >= results["recovered"]["acc"] - 0.05 and raw < normalized - 0.2


@pytest.mark.slow
def test_iterative_pruning_shares_the_budget_and_keeps_each_round(make_cfg, tmp_path, caplog):
    import logging

    results = run(make_cfg("pruning=iterative", "pruning.rounds=2", "recovery.steps=40"))
    rounds = results["pruning"]["rounds"]
    assert [r["ratio"] for r in rounds] == pytest.approx([0.9 * (1 - 0.5 ** 3), 0.9])
    assert [r["steps"] for r in rounds] == [20, 20]
    assert rounds[0]["recovered"]["acc"] > rounds[0]["pruned"]["acc"] - 0.01
    assert results["recovered"]["sparsity"] >= 0.9 - 1e-3
    assert (tmp_path / "round_1" / "student.pt").is_file()
    # interrupted after the first round: a resume keeps that round and recovers the second
    (tmp_path / "results.json").unlink()
    with caplog.at_level(logging.INFO):
        again = run(make_cfg("pruning=iterative", "pruning.rounds=2", "recovery.steps=40", f"resume={tmp_path}"))
    assert f"Round kept from {tmp_path / 'round_1' / 'student.pt'}" in caplog.text
    assert again["pruning"]["rounds"][0]["recovered"] == rounds[0]["recovered"]
    assert again["recovered"]["sparsity"] >= 0.9 - 1e-3


@pytest.mark.slow
def test_structured_pruning_in_rounds_resumes_with_the_thinner_round(make_cfg, tmp_path, caplog):
    import logging

    settings = ("pruning=structured", "pruning.rounds=2", "pruning.schedule=linear", "recovery.steps=20")
    results = run(make_cfg(*settings))
    assert [r["ratio"] for r in results["pruning"]["rounds"]] == pytest.approx([0.25, 0.5])
    assert 0.5 - 1e-3 <= results["pruning"]["removed"] < 0.55  # of the teacher's FLOPs, not of round 1's
    assert results["pruning"]["rounds"][0]["removed"] < results["pruning"]["rounds"][1]["removed"]
    assert results["pruned"] == results["pruning"]["rounds"][1]["pruned"]  # where the last recovery started
    assert results["deployment"]["flops_ratio"] == pytest.approx(1 - results["pruning"]["removed"])
    # interrupted after the first round: its thinner student is loaded into the re-pruned network
    (tmp_path / "results.json").unlink()
    with caplog.at_level(logging.INFO):
        again = run(make_cfg(*settings, f"resume={tmp_path}"))
    assert f"Round kept from {tmp_path / 'round_1' / 'student.pt'}" in caplog.text
    assert again["pruning"]["rounds"][0]["recovered"] == results["pruning"]["rounds"][0]["recovered"]
    assert again["pruning"]["channels"] == results["pruning"]["channels"]
    assert again["pruning"]["removed"] == results["pruning"]["removed"]


@pytest.mark.slow
def test_taylor_pruning_ranks_on_dreams_it_keeps_for_a_resume(make_cfg, tmp_path, caplog, monkeypatch):
    import logging

    import dfkd.run

    settings = ("pruning=structured", "pruning.importance=taylor", "pruning.scope=global", "pruning.dreams=64",
                "recovery.steps=10", "deploy=none")
    (tmp_path / "pruned_channels.json").write_text(json.dumps({"0": {}, "1": {}}))  # an earlier run's, in rounds
    with caplog.at_level(logging.INFO):
        results = run(make_cfg(*settings))
    assert "Dreamed 64 images to rank channels on" in caplog.text
    kept = torch.load(tmp_path / "pruning_dreams.pt", weights_only=True)
    assert kept["images"].shape == (64, 1, 8, 8) and kept["classes"].shape == (64,)
    assert results["config"]["pruning_method"] == "structured taylor global"
    assert results["config"]["pruning_dreams"] == 64 and results["pruning"]["removed"] >= 0.5 - 1e-3
    assert results["times"]["dream"] > 0
    # a resumed run ranks on the kept dreams (dreaming again would fail here), so it prunes the same channels
    (tmp_path / "results.json").unlink()
    monkeypatch.setattr(dfkd.run, "dream", lambda *args: pytest.fail("the kept dreams were dreamed again"))
    again = run(make_cfg(*settings, f"resume={tmp_path}"))
    assert again["pruning"]["channels"] == results["pruning"]["channels"]
    # ranked otherwise on a resume (a GPU's arithmetic): a message naming the settings, not a checkpoint mismatch
    known = json.loads((tmp_path / "pruned_channels.json").read_text())
    assert known == {"0": results["pruning"]["channels"]}  # an earlier run's rounds in the folder are not kept
    known["0"] = {name: count + 1 for name, count in known["0"].items()}
    (tmp_path / "pruned_channels.json").write_text(json.dumps(known))
    (tmp_path / "results.json").unlink()
    with pytest.raises(DfkdError, match=r"pruning\.scope=uniform"):
        run(make_cfg(*settings, f"resume={tmp_path}"))


def test_pruning_dreams_are_labelled_by_the_teacher_and_leave_the_random_stream_alone(digits_teacher, make_cfg,
                                                                                      tmp_path):
    from dfkd.config import build
    from dfkd.run import Stages, Stopwatch

    teacher, data = digits_teacher
    cfg = make_cfg("pruning=structured", "pruning.importance=taylor")
    stages = Stages(cfg, teacher, data, SimpleNamespace(device=torch.device("cpu")), None, tmp_path, Stopwatch(),
                    build(cfg.synthesis.synthesizer, "synthesis.synthesizer"))
    rng = torch.get_rng_state()
    images, classes = stages.pruning_dreams(40)
    assert torch.equal(torch.get_rng_state(), rng)  # the KD batches after it are those of a run without it
    assert images.shape == (40, 1, 8, 8) and images.device.type == "cpu"
    with torch.no_grad():
        assert torch.equal(classes, teacher(images).argmax(1))
    assert torch.equal(torch.load(tmp_path / "pruning_dreams.pt", weights_only=True)["classes"], classes)


def test_more_rounds_than_steps_are_refused(make_cfg):
    with pytest.raises(DfkdError, match=r"pruning\.rounds=5.*recovery\.steps=3"):
        run(make_cfg("pruning=iterative", "pruning.rounds=5", "recovery.steps=3"))


@pytest.mark.parametrize("pruning", [["pruning=iterative"], ["pruning=structured", "pruning.rounds=2"]])
def test_rounds_without_a_recovery_are_refused_before_any_work(make_cfg, tmp_path, pruning):
    with pytest.raises(DfkdError, match=r"pruning\.rounds=\d: .*recovery=none recovers nothing"):
        run(make_cfg(*pruning, "recovery=none", f"paths.cache_dir={tmp_path / 'cache'}"))
    assert not (tmp_path / "cache").exists()
