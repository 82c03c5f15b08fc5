import json
import logging

import pytest

from conftest import wandb_log_holds
from dfkd import report


def _result(folder, seed, method, ratio, teacher, pruned, recovered):
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({
        "config": {"model": "DigitsCNN", "data": "digits", "pruning_ratio": ratio,
                   "pruning_method": "l1", "recovery": method, "synthesis": None, "seed": seed,
                   "recovery_steps": 300, "recovery_batch_size": 128},
        "teacher": {"acc": teacher}, "pruned": {"acc": pruned}, "recovered": {"acc": recovered},
        "times": {"recover": 10.0 + seed, "total": 20.0 + seed}}))


def test_report_averages_seeds_and_draws_the_plot(tmp_path, caplog):
    _result(tmp_path / "0", 0, "dream_kd", 0.9, 0.99, 0.20, 0.96)
    _result(tmp_path / "1", 1, "dream_kd", 0.9, 0.97, 0.10, 0.94)
    _result(tmp_path / "2", 0, "noise_kd", 0.9, 0.99, 0.20, 0.80)
    _result(tmp_path / "3", 0, "dream_kd", 0.5, 0.99, 0.90, 0.98)
    (tmp_path / "4").mkdir()
    (tmp_path / "4" / "results.json").write_text("{not json")
    (tmp_path / "5").mkdir()
    (tmp_path / "5" / "results.json").write_text(json.dumps({"config": {}}))

    with caplog.at_level(logging.WARNING):
        target = report.write_report(tmp_path)
    assert "4/results.json" in caplog.text and "5/results.json" in caplog.text

    rows = {(r["recovery"], r["pruning_ratio"]): r for r in report.summarize(report.collect(tmp_path))}
    assert len(rows) == 3
    dream90 = rows[("dream_kd", 0.9)]
    assert dream90["seeds"] == [0, 1]
    assert dream90["recovered"][0] == pytest.approx(0.95)
    assert dream90["recovered"][1] == pytest.approx(0.0141421, rel=1e-4)   # sample std of .96, .94
    assert dream90["teacher"][0] == pytest.approx(0.98)
    assert dream90["recovery_pct"][0] == pytest.approx((0.96 / 0.99 + 0.94 / 0.97) / 2)
    assert rows[("noise_kd", 0.9)]["recovered"] == (pytest.approx(0.80), 0.0)

    text = target.read_text()
    assert "| DigitsCNN | digits | 0.90 l1 | dream_kd | - | 300 x 128 | 0,1 | 98.00 ± 1.41 |" in text
    png = (tmp_path / "accuracy-vs-sparsity.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000


def test_runs_that_differ_in_a_setting_without_a_column_are_not_averaged_as_seeds(tmp_path):
    """A sweep of recovery.optimizer.lr: one row per value, the value named, never one row with
    'seeds 0,0'; seeds of one configuration still average, whatever folder they were written to."""
    runs = (("a", 0, 0.1, 0.99, ""), ("b", 0, 0.0001, 0.96, ""),
            ("c", 1, 0.1, 0.97, "  newer_setting: 1\n"),  # code that has a setting the others lack
            ("d", 2, 0.1, 0.97, "  num_workers: 4\n"))   # how images are read: not another configuration
    for name, seed, lr, recovered, extra in runs:
        _result(tmp_path / name, seed, "real_kd", 0.9, 0.99, 0.20, recovered)
        (tmp_path / name / ".hydra").mkdir()
        (tmp_path / name / ".hydra" / "config.yaml").write_text(
            f"seed: {seed}\npaths:\n  output_dir: {tmp_path / name}\nrecovery:\n  optimizer:\n    lr: {lr}\n"
            f"data:\n  root: {tmp_path / name}\n{extra}")
    (tmp_path / "b" / ".hydra" / "resumed").mkdir()  # resumed with a new lr: that is the one it ran with
    (tmp_path / "b" / ".hydra" / "resumed" / "config.yaml").write_text(
        (tmp_path / "b" / ".hydra" / "config.yaml").read_text().replace("lr: 0.0001", "lr: 0.001"))
    _result(tmp_path / "e", 3, "real_kd", 0.9, 0.99, 0.20, 0.97)  # its config not copied with it
    rows = report.summarize(report.collect(tmp_path))
    assert {(r["settings"], tuple(r["seeds"])) for r in rows} == {
        ("recovery.optimizer.lr=0.001", (0,)), ("recovery.optimizer.lr=0.1", (0, 1, 2)), ("", (3,))}
    assert "| recovery.optimizer.lr=0.001 | 0 | 99.00 | 20.00 | 96.00 |" in report.markdown(rows)


def test_report_of_an_empty_folder_says_what_to_point_it_at(tmp_path):
    with pytest.raises(SystemExit, match="no results.json"):
        report.write_report(tmp_path)


def test_report_table_goes_to_wandb(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # nobody logged in: offline
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    _result(tmp_path / "0", 0, "dream_kd", 0.9, 0.99, 0.20, 0.96)
    report.main([str(tmp_path), "--wandb", "dfkd-test"])
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    wandb_log_holds(runs[0], b"results")
    assert list(runs[0].rglob("*.table.json"))


def test_report_puts_accuracy_against_latency(tmp_path):
    def measured(ms, flops):
        return {"params": 10, "nonzero_params": 5, "flops": flops, "file_bytes": 40, "compressed_bytes": 20,
                "latency_ms": {"1": ms / 10, "64": ms}}

    for name, method, ms, flops in (("a", "structured l1", 5.0, 50), ("b", "l1", 10.0, 100)):
        _result(tmp_path / name, 0, "dream_kd", 0.5, 0.99, 0.5, 0.97)
        path = tmp_path / name / "results.json"
        result = json.loads(path.read_text())
        result["config"]["pruning_method"] = method
        result["deployment"] = {"teacher": measured(10.0, 100), "student": measured(ms, flops),
                                "flops_ratio": flops / 100, "compressed_ratio": 1.0}
        path.write_text(json.dumps(result))
    text = report.write_report(tmp_path).read_text()
    assert "| 0.50 | 1.00 | 5.00 / 10.00 (64) |" in text and "| 1.00 | 1.00 | 10.00 / 10.00 (64) |" in text
    png = (tmp_path / "accuracy-vs-latency.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    # runs without deployment figures (older results.json) still report, without that plot
    for name in ("a", "b"):
        (tmp_path / name / "results.json").unlink()
    _result(tmp_path / "c", 0, "dream_kd", 0.5, 0.99, 0.5, 0.97)
    (tmp_path / "accuracy-vs-latency.png").unlink()
    assert "| - | - | - |" in report.write_report(tmp_path).read_text()
    assert not (tmp_path / "accuracy-vs-latency.png").exists()


@pytest.mark.parametrize("with_validation", [False, True])
def test_tables_keep_their_columns_with_and_without_a_validation_split(tmp_path, with_validation):
    _result(tmp_path / "0", 0, "dream_kd", 0.9, 0.99, 0.20, 0.96)
    results = json.loads((tmp_path / "0" / "results.json").read_text())
    results.update(sparsity=0.9, times={"recover": 1.0})
    if with_validation:
        for stage, acc in (("teacher", 0.985), ("pruned", 0.25), ("recovered", 0.955)):
            results[stage]["val_acc"] = acc
        (tmp_path / "0" / "results.json").write_text(json.dumps(results))
    rows = report.table(results).splitlines()[:4]
    assert len({len(line) for line in rows}) == 1, rows  # the columns line up
    assert ("validation" in rows[0]) is with_validation
    assert ("95.50%" in rows[3] and "98.50%" in rows[1]) is with_validation

    lines = report.markdown(report.summarize(report.collect(tmp_path))).splitlines()
    assert len({line.count("|") for line in lines}) == 1, lines  # header, rule and row agree
    cells = dict(zip(lines[0].split("|"), lines[2].split("|")))
    expected = ("98.50", "95.50") if with_validation else ("-", "-")  # one run: no spread to show
    assert (cells[" teacher, validation % "].strip(), cells[" recovered, validation % "].strip()) == expected


def test_a_structured_run_reports_the_share_it_cut_not_a_weight_sparsity_of_zero(tmp_path):
    """Structured pruning zeroes no weight: the console table gives the share of the teacher's
    FLOPs removed where an unstructured run gives its sparsity."""
    _result(tmp_path / "0", 0, "dream_kd", 0.5, 0.99, 0.20, 0.96)
    results = json.loads((tmp_path / "0" / "results.json").read_text())
    results["config"].update(pruning_method="structured l1", pruning_target="flops")
    results.update(pruning={"removed": 0.5178}, times={"recover": 1.0})
    for stage in ("pruned", "recovered"):
        results[stage]["sparsity"] = 0.0
    lines = report.table(results).splitlines()
    assert lines[0].split()[-2:] == ["flops", "cut"]
    assert lines[2].endswith("51.78%") and lines[3].endswith("51.78%") and lines[1].endswith("0.00%")
