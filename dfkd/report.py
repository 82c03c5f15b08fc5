"""Stage 4: what a run found, as results.json in its folder and a short table on the console."""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

from dfkd.evaluate import near_chance
from dfkd.rundir import MOVABLE

log = logging.getLogger(__name__)


def flatten(results: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a/b": 1}, for W&B summaries and tables."""
    flat = {}
    for key, value in results.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}/"))
        else:
            flat[name] = value
    return flat


def write_results(results: dict, folder: str | Path) -> Path:
    path = Path(folder) / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, sort_keys=False))
    return path


def normalization_warning(unset: dict) -> str:
    """What a teacher of one's own judged on guessed normalization (``unset``: its mean and std) risks."""
    return (f"data.mean and data.std were not set, so the teacher from teacher.checkpoint saw images normalized "
            f"with mean {unset['mean']} and std {unset['std']}: if it was trained with other values, every figure "
            f"here is too low. Set them (data.mean=[...] data.std=[...]).")


# The mean over a teacher's BatchNorm layers of the normalized distance (synthesis.bn_stats) between
# the statistics of the real images it is judged on and its running statistics. Seven teachers (digits,
# CIFAR-10, every built-in architecture) with their own settings: 0.02-0.30; with a wrong normalization
# or image size: 0.55-0.97 (experiments/README.md, "teacher_bn_fit").
BN_FIT_WARNING = 0.5


def bn_fit_warning(fit: float) -> str:
    """What a teacher of one's own whose BN statistics do not fit the real images risks."""
    return (f"The teacher from teacher.checkpoint sees the real images with BatchNorm statistics far from "
            f"those it was trained on (mean normalized distance {fit:.2f}, above {BN_FIT_WARNING}; teachers of "
            f"every built-in architecture score 0.02-0.30 on their own test images): the images may be "
            f"normalized (data.mean, data.std) or sized (data.image_size) otherwise than in its training, "
            f"which lowers every figure here, and the dreams follow these statistics. Check those settings.")


def warnings(results: dict, num_classes: int) -> list[str]:
    """What makes a run's figures bad, in words: said loudly in the log, the table and
    results.json, never written down as an ordinary result."""
    found = deployment_warnings(results.get("deployment"))
    if results.get("deployment_error"):
        found.append(f"Measuring the student for deployment failed ({results['deployment_error']}; the traceback "
                     f"is in run.log): student.pt and the accuracy figures are kept. deploy=none skips the stage.")
    teacher, pruned, recovered = results["teacher"], results["pruned"], results["recovered"]
    if teacher.get("normalization_unset"):
        found.append(normalization_warning(teacher["normalization_unset"]))
    if teacher.get("bn_fit", 0.0) > BN_FIT_WARNING:
        found.append(bn_fit_warning(teacher["bn_fit"]))
    syn = results.get("synthesis") or {}
    if "acc" not in recovered:  # strict data-free mode: judged on held-out dreams
        if results["config"].get("recovery") != "none" and recovered["dream_agreement"] < 0.5:
            found.append(f"The student agrees with its teacher on only {100 * recovered['dream_agreement']:.1f}% "
                         f"of the held-out dreams: recovery failed.")
        return found + _dream_warning(syn)
    if near_chance(teacher["acc"], num_classes):
        found.append(f"The teacher is near chance ({100 * teacher['acc']:.1f}% for {num_classes} classes): "
                     f"nothing distilled from it can be better. Check teacher.checkpoint and the data.")
    found += _dream_warning(syn)
    if results["config"].get("recovery") != "none":
        if recovered["acc"] < pruned["acc"] - 0.01:
            found.append(f"Recovery made the student worse ({100 * pruned['acc']:.1f}% -> "
                         f"{100 * recovered['acc']:.1f}%): lower recovery.optimizer.lr or set "
                         f"recovery.gradient_clip_val.")
        elif recovered.get("agreement", 1.0) < 0.5 and recovered["acc"] < 0.5 * teacher["acc"]:
            found.append(f"Recovery failed: the student agrees with its teacher on "
                         f"{100 * recovered['agreement']:.1f}% of the test images. Lower "
                         f"recovery.optimizer.lr, set recovery.gradient_clip_val, or recover longer.")
    return found


def _dream_warning(syn: dict) -> list[str]:
    if syn.get("synthesizer") not in (None, "Noise") and syn.get("target_acc", 1.0) < 0.5:
        mix = (f"Set synthesis.synthesizer.target_mix=0 first: dreams aimed at two classes (now "
               f"{syn['target_mix']}) are recognized less, and cost weak teachers accuracy. "
               if syn.get("target_mix") else "")
        if syn.get("diversity_weight"):
            mix += (f"Lower synthesis.synthesizer.diversity_weight (now {syn['diversity_weight']:g}) first: "
                    f"dreams pushed apart within a class are recognized less. ")
        return [f"The teacher recognizes only {100 * syn['target_acc']:.0f}% of the dreams as their target "
                f"class: the synthesis is not working. {mix}Lower synthesis.synthesizer.bn_weight, raise its "
                f"warmup_steps or g_steps, or lower its learning rates."]
    return []


def table(results: dict) -> str:
    """The console summary of one run."""
    cfg = results["config"]

    def pct(value) -> str:
        return "-" if value is None else f"{100 * value:6.2f}%"

    rows = [("teacher", results["teacher"]),
            (f"pruned ({cfg['pruning_ratio']:.0%} {cfg['pruning_method']})", results["pruned"]),
            (f"recovered ({cfg['recovery']})", results["recovered"])]
    validation = any("val_acc" in r for _, r in rows)  # a column only where there is a validation split
    # structured pruning zeroes no weight: it removes channels, so its column is the share of the
    # teacher's FLOPs (or parameters) removed, not weight sparsity
    removed = (results.get("pruning") or {}).get("removed")
    column = "sparsity" if removed is None else f"{cfg.get('pruning_target', 'flops')} cut"
    lines = [f"{'':28s}{'accuracy':>10s}" + (f"{'validation':>12s}" if validation else "")
             + f"{'agreement':>11s}{column:>11s}"]
    for i, (name, r) in enumerate(rows):
        agreement = r.get("agreement", r.get("dream_agreement"))
        val = f"{pct(r.get('val_acc')):>12s}" if validation else ""
        pruned = r.get("sparsity") if removed is None else (0.0 if i == 0 else removed)
        lines.append(f"{name:28s}{pct(r.get('acc')):>10s}{val}{pct(agreement):>11s}{pct(pruned):>11s}")
    if not results.get("real_data_read", True):
        lines.append("strict data-free: no real data was read; agreement is measured on held-out dreams")
    times = ", ".join(f"{k} {v:.1f} s" for k, v in results["times"].items())
    lines.append(f"wall time: {times}")
    syn = results.get("synthesis") or {}
    if syn.get("synthesized_images"):
        line = f"synthesis: {syn['synthesized_images']} images in {syn['synthesis_seconds']:.1f} s"
        if "target_acc" in syn:
            line += (f"; the teacher agrees with {100 * syn['target_acc']:.1f}% of their target classes, "
                     f"class balance {syn['class_balance']:.2f}, BN gap {syn['bn_loss']:.2f}")
        lines.append(line)
    lines += deployment_lines(results.get("deployment"))
    lines += [f"WARNING: {w}" for w in results.get("warnings", [])]
    return "\n".join(lines)


def deployment_lines(found: dict | None) -> list[str]:
    """Parameters, FLOPs, file size and CPU latency of the teacher and the student."""
    if not found:
        return []
    sizes = list(found["student"].get("latency_ms", {}))
    head = f"{'deployment (CPU)':28s}{'params':>9s}{'non-zero':>10s}{'FLOPs':>9s}{'file':>9s}{'zipped':>9s}"
    lines = [head + "".join(f"{f'ms @{b}':>10s}" for b in sizes)]
    for name in ("teacher", "student"):
        r = found[name]
        line = (f"{name:28s}{human(r['params']):>9s}{human(r['nonzero_params']):>10s}{human(r['flops']):>9s}"
                f"{human(r['file_bytes'], 'B'):>9s}{human(r['compressed_bytes'], 'B'):>9s}")
        lines.append(line + "".join(f"{r['latency_ms'][b]:10.2f}" for b in sizes))
    if "speedup" in found:
        speed = ", ".join(f"{x:.2f}x at batch {b}" for b, x in found["speedup"].items())
        lines.append(f"student vs teacher: {speed} ({found['threads']} CPU threads, "
                     f"{found.get('memory_format', 'contiguous')}); "
                     f"FLOPs x{found['flops_ratio']:.2f}, compressed file x{found['compressed_ratio']:.2f}")
    saved = [Path(found[k]["path"]).name for k in ("export", "onnx") if "path" in found.get(k, {})]
    if saved:
        lines.append(f"exported (loads without dfkd): {', '.join(saved)}"
                     + (" (ONNX Runtime matches PyTorch)" if found.get("onnx", {}).get("matches") else ""))
    return lines


def human(n: float, unit: str = "") -> str:
    """1234567 -> '1.23M'."""
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.2f}{prefix}{unit}"
    return f"{n:.0f}{unit}"


def deployment_warnings(found: dict | None) -> list[str]:
    found = found or {}
    said = [f"Exporting the student ({k}) failed: {found[k]['error']}. student.pt is saved; set deploy.{k}=false "
            f"to skip the export." for k in ("export", "onnx") if "error" in found.get(k, {})]
    if found.get("onnx", {}).get("matches") is False:
        said.append(f"ONNX Runtime's outputs differ from PyTorch's (largest difference "
                    f"{found['onnx']['max_abs_difference']:.2g}): do not ship student.onnx unchecked.")
    return said


# -- many runs: python -m dfkd.report FOLDER -------------------------------------------------

GROUP_KEYS = ("model", "data", "pruning_ratio", "pruning_method", "recovery", "synthesis",
              "recovery_steps", "recovery_batch_size")


def collect(folder: str | Path) -> list[dict]:
    """Every readable results.json below ``folder``; unreadable ones are skipped with a warning."""
    runs = []
    for path in sorted(Path(folder).rglob("results.json")):
        try:
            result = json.loads(path.read_text())
            if result.get("real_data_read") is False:
                log.warning("Skipping %s: a strict data-free run has no test accuracy for this table "
                            "(its results.json gives the dream agreement)", path)
                continue
            result["config"]["recovery"], result["recovered"]["acc"]  # noqa: B018 - must exist
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.warning("Skipping %s: not a complete dfkd results.json (%s)", path, err)
            continue
        result["path"] = str(path.parent)
        runs.append(result)
    return runs


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, var ** 0.5


# Settings that do not make runs different configurations: the seed (rows average over it), where
# the run wrote and read, how it logged, what the deployment stage measured.
NOT_A_SETTING = ("seed", "resume", "task_name", *MOVABLE)
NOT_A_SETTING_PREFIXES = ("paths.", "logger.", "deploy.", "trainer.enable_progress_bar")


def _settings(run: dict) -> dict[str, str] | None:
    """Every setting of a run (flattened, as on the command line) but those in NOT_A_SETTING*:
    its resumed config where it was resumed, else its .hydra/config.yaml; None without either
    (or without a folder)."""
    from omegaconf import OmegaConf

    if "path" not in run:  # a results dict not read from a run folder (collect adds where it was)
        return None
    hydra = Path(run["path"]) / ".hydra"
    for path in (hydra / "resumed" / "config.yaml", hydra / "config.yaml"):
        try:
            cfg = OmegaConf.to_container(OmegaConf.load(path))
            break
        except Exception:  # noqa: BLE001 - missing or unreadable: the next one
            continue
    else:
        return None
    named = {key.replace("/", "."): str(value) for key, value in flatten(cfg).items()}
    return {k: v for k, v in named.items() if k not in NOT_A_SETTING and not k.startswith(NOT_A_SETTING_PREFIXES)}


def _split_by_settings(members: list[dict]) -> list[tuple[str, list[dict]]]:
    """Runs that share the table's columns, split further by every other setting in which they
    differ (a swept learning rate, a BN weight...), each part labelled with those settings. Only
    settings every run has are compared (a run of older code lacks newer ones); a run without its
    config (a results.json copied alone) joins the part whose label is empty."""
    found = [_settings(m) for m in members]
    known = [f for f in found if f is not None]
    shared = set.intersection(*(set(f) for f in known)) if known else set()
    differing = sorted(k for k in shared if len({f[k] for f in known}) > 1)
    parts: dict[str, list[dict]] = {}
    for member, settings in zip(members, found):
        label = " ".join(f"{k}={settings[k]}" for k in differing) if settings is not None else ""
        parts.setdefault(label, []).append(member)
    return sorted(parts.items())


def summarize(runs: list[dict]) -> list[dict]:
    """One row per configuration: mean and sample standard deviation over its seeds. Runs that
    differ in a setting without a column of its own are rows of their own, the setting named
    (``settings``), never averaged together as if they were seeds."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault(tuple(r["config"].get(k) for k in GROUP_KEYS), []).append(r)
    configurations = [(key, settings, members)
                      for key, group in sorted(groups.items(), key=lambda kv: tuple(str(k) for k in kv[0]))
                      for settings, members in _split_by_settings(group)]
    rows = []
    for key, settings, members in configurations:
        row = dict(zip(GROUP_KEYS, key))
        row["settings"] = settings
        row["seeds"] = sorted(m["config"].get("seed") for m in members)
        for stage in ("teacher", "pruned", "recovered"):
            row[stage] = _mean_std([m[stage]["acc"] for m in members])
        row["recovery_pct"] = _mean_std([m["recovered"]["acc"] / m["teacher"]["acc"] for m in members])
        for stage in ("teacher", "recovered"):  # on the validation split, where the runs had one
            val = [m[stage]["val_acc"] for m in members if "val_acc" in m[stage]]
            row[f"{stage}_val"] = _mean_std(val) if val else None
        target = [m["synthesis"]["target_acc"] for m in members if "target_acc" in (m.get("synthesis") or {})]
        row["target_acc"] = _mean_std(target) if target else None
        row.update(deployment_row(members))
        row["recover_s"] = _mean_std([m["times"].get("recover", 0.0) for m in members])
        row["total_s"] = _mean_std([m["times"].get("total", 0.0) for m in members])
        rows.append(row)
    return rows


def deployment_row(members: list[dict]) -> dict:
    """Mean deployment figures of a group of runs: FLOPs and compressed size against the teacher's,
    CPU latency of teacher and student at the largest batch size measured (None where not measured)."""
    found = [m["deployment"] for m in members if m.get("deployment")]
    row = {"flops_ratio": None, "compressed_ratio": None, "latency_batch": None, "latency_ms": None,
           "teacher_latency_ms": None}
    if not found:
        return row
    row["flops_ratio"] = sum(d["flops_ratio"] for d in found) / len(found)
    row["compressed_ratio"] = sum(d["compressed_ratio"] for d in found) / len(found)
    timed = [d for d in found if d["student"].get("latency_ms")]
    if timed:
        batch = max(timed[0]["student"]["latency_ms"], key=int)
        row["latency_batch"] = batch
        for key, who in (("latency_ms", "student"), ("teacher_latency_ms", "teacher")):
            row[key] = sum(d[who]["latency_ms"][batch] for d in timed) / len(timed)
    return row


def markdown(rows: list[dict]) -> str:
    single = False  # one run in the row: its figure, with no spread

    def pm(pair, scale=100.0, digits=2):
        spread = "" if single else f" ± {scale * pair[1]:.{digits}f}"
        return f"{scale * pair[0]:.{digits}f}{spread}"

    def maybe(pair, scale=100.0, digits=2):
        return "-" if pair is None else pm(pair, scale, digits)

    def ratio(value):
        return "-" if value is None else f"{value:.2f}"

    def latency(r):
        if r.get("latency_ms") is None:
            return "-"
        return f"{r['latency_ms']:.2f} / {r['teacher_latency_ms']:.2f} ({r['latency_batch']})"

    settings = any(r.get("settings") for r in rows)  # a column only where runs differ in other settings
    lines = ["| model | data | pruning.ratio | method | synthesis | steps x batch | " + ("settings | " if settings else "")
             + "seeds | teacher % | "
             "pruned % | recovered % | recovered / teacher % | teacher, validation % | recovered, validation % | "
             "dreams' target agreement | FLOPs / teacher | zipped size / teacher | CPU ms (batch) student / teacher | "
             "recover s | total s |",
             "|---" * (19 + settings) + "|"]
    for r in rows:
        single = len(r["seeds"]) == 1
        steps = "-" if r["recovery"] == "none" else f"{r['recovery_steps']} x {r['recovery_batch_size']}"
        lines.append(
            f"| {r['model']} | {r['data']} | {r['pruning_ratio']:.2f} {r['pruning_method']} | "
            f"{r['recovery']} | {r['synthesis'] or '-'} | {steps} | " + (f"{r['settings'] or '-'} | " if settings else "")
            + f"{','.join(map(str, r['seeds']))} | "
            f"{pm(r['teacher'])} | {pm(r['pruned'])} | {pm(r['recovered'])} | "
            f"{pm(r['recovery_pct'], digits=1)} | {maybe(r.get('teacher_val'))} | {maybe(r.get('recovered_val'))} | "
            f"{maybe(r.get('target_acc'), 1, 3)} | {ratio(r.get('flops_ratio'))} | {ratio(r.get('compressed_ratio'))} | "
            f"{latency(r)} | {pm(r['recover_s'], 1, 1)} | {pm(r['total_s'], 1, 1)} |")
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def _figure(path: Path, xlabel: str, legend_size=None):
    """One plot's axes; labelled, gridded, with its legend, and saved to ``path`` on exit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    try:
        yield ax
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=legend_size)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)


def plot(rows: list[dict], path: Path) -> Path:
    """Recovered accuracy against sparsity, one line per method, error bars over seeds."""
    structured = any("structured" in str(r["pruning_method"]) for r in rows)
    xlabel = ("pruning.ratio (weights pruned; structured: the share of FLOPs or parameters removed)" if structured
              else "sparsity (fraction of weights pruned)")
    with _figure(path, xlabel) as ax:
        for method, settings in sorted({(r["recovery"], r.get("settings", "")) for r in rows}):
            points = sorted((r["pruning_ratio"], *r["recovered"]) for r in rows
                            if (r["recovery"], r.get("settings", "")) == (method, settings))
            xs, means, stds = zip(*points)
            ax.errorbar(xs, [100 * m for m in means], yerr=[100 * s for s in stds], marker="o",
                        capsize=3, label=f"{method} {settings}".strip())
        teacher = [100 * r["teacher"][0] for r in rows]
        ax.axhline(sum(teacher) / len(teacher), color="grey", linestyle="--", label="teacher")
    return path


def plot_latency(rows: list[dict], path: Path) -> Path | None:
    """Recovered accuracy against the student's CPU latency, one point per configuration, the
    teacher's latency and accuracy as a star; None when no run measured latency."""
    timed = [r for r in rows if r.get("latency_ms") is not None]
    if not timed:
        return None
    with _figure(path, f"CPU latency at batch {timed[0]['latency_batch']} (ms)", legend_size=7) as ax:
        for r in timed:
            ax.errorbar(r["latency_ms"], 100 * r["recovered"][0], yerr=100 * r["recovered"][1], marker="o",
                        capsize=3, label=f"{r['pruning_method']} {r['pruning_ratio']:.2f}, {r['recovery']} {r.get('settings', '')}".strip())
        ax.scatter([sum(r["teacher_latency_ms"] for r in timed) / len(timed)],
                   [100 * sum(r["teacher"][0] for r in timed) / len(timed)], marker="*", s=150, color="black",
                   label="teacher")
    return path


def log_to_wandb(rows: list[dict], folder: Path, project: str) -> None:
    """The table (wandb.Table) and the plot in a W&B run of their own (offline unless logged in)."""
    import os

    import wandb

    from dfkd.loggers import wandb_logged_in

    mode = None if os.environ.get("WANDB_MODE") else ("online" if wandb_logged_in() else "offline")
    columns = ["model", "data", "sparsity", "method", "synthesis", "steps", "batch", "settings", "seeds",
               "teacher", "pruned", "recovered", "recovered_std", "recovered_over_teacher"]
    data = [[r["model"], r["data"], r["pruning_ratio"], r["recovery"], r["synthesis"] or "-",
             r["recovery_steps"], r["recovery_batch_size"], r.get("settings") or "-", len(r["seeds"]), r["teacher"][0],
             r["pruned"][0], r["recovered"][0], r["recovered"][1], r["recovery_pct"][0]] for r in rows]
    run = wandb.init(project=project, job_type="report", dir=str(folder), mode=mode,
                     name=f"report-{folder.name}")
    try:
        run.log({"results": wandb.Table(columns=columns, data=data),
                 "accuracy_vs_sparsity": wandb.Image(str(folder / "accuracy-vs-sparsity.png"))})
    finally:
        run.finish()


def write_report(folder: str | Path, wandb_project: str | None = None) -> Path:
    folder = Path(folder)
    runs = collect(folder)
    if not runs:
        raise SystemExit(f"dfkd.report: no results.json below {folder}; point it at a run folder "
                         f"or a multirun folder (outputs/multirun/DATE).")
    rows = summarize(runs)
    target = folder / "results.md"
    target.write_text(f"# dfkd results: {len(runs)} runs in {folder}\n\n" + markdown(rows))
    plot(rows, folder / "accuracy-vs-sparsity.png")
    if plot_latency(rows, folder / "accuracy-vs-latency.png") is None:
        (folder / "accuracy-vs-latency.png").unlink(missing_ok=True)  # an earlier report's, for other runs
    if wandb_project:
        log_to_wandb(rows, folder, wandb_project)
    return target


def main(argv: list[str] | None = None) -> None:
    import argparse

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    parser = argparse.ArgumentParser(prog="python -m dfkd.report",
                                     description="Summarize a folder of dfkd runs (results.md + plot).")
    parser.add_argument("folder", help="a run folder or a multirun folder, e.g. outputs/multirun/DATE")
    parser.add_argument("--wandb", metavar="PROJECT", default=None,
                        help="also log the table and plot to this W&B project (offline unless logged in)")
    args = parser.parse_args(argv)
    target = write_report(args.folder, args.wandb)
    print(target.read_text())
    latency = target.parent / "accuracy-vs-latency.png"
    print(f"Wrote {target} and {target.parent / 'accuracy-vs-sparsity.png'}"
          + (f" and {latency}" if latency.is_file() else " (no run measured latency: no accuracy-vs-latency.png)"))


if __name__ == "__main__":
    main()
