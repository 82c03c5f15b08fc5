"""How alike are the dreams of one class, against real images of one class? The teacher's
penultimate features (the input of its last Linear layer) on real validation images and on the fast
synthesizer's dreams at several ``diversity_weight`` values, on the CPU-reduced CIFAR-10 setting
(its cached teacher; trained first if not cached, about 15 minutes).

For each source: the mean cosine similarity between the features of two images of the same class
(real images: their label; dreams: their target class), the diversity of synthesis/diversity (one
minus the mean cosine similarity over all pairs), the teacher's mean confidence and its agreement
with the labels or target classes.

    .venv/bin/python experiments/dream_similarity.py --weights 0,3,5,8,12

Writes experiments/results/dream_similarity/results.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

from dfkd.config import build
from dfkd.synthesis import make_synthesizer
from dfkd.teacher import build_model, cache_file, obtain_teacher

ROOT = Path(__file__).resolve().parents[1]


def mean(rows: list[dict]) -> dict:
    return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}


FIGURES = {"within": "synthesis/within_class_similarity", "diversity": "synthesis/diversity",
           "confidence": "synthesis/confidence", "agreement": "synthesis/target_acc"}


def figures(stats: dict) -> dict:
    """This table's figures among a synthesizer's quality figures (``Synthesizer.quality``)."""
    return {name: stats[key] for name, key in FIGURES.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default="0,3,5,8,12", help="diversity_weight values, comma-separated")
    parser.add_argument("--batches", type=int, default=10, help="batches judged after two unjudged ones")
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["+experiment=cifar10_cpu_reduced", "teacher.seed=0",
                                           f"paths.output_dir={ROOT / 'outputs' / 'bench' / 'dream_similarity'}"])
    data = build(cfg.data, "data")
    data.setup()
    cache = cache_file(cfg.paths.cache_dir, cfg.model, cfg.data, cfg.teacher, cfg.trainer)
    teacher, info = obtain_teacher(build_model(cfg.model, cfg.teacher.seed), cfg.teacher, data, cfg.trainer,
                                   cache, Path(cfg.paths.output_dir))
    teacher.eval()
    rows = []
    for weight in (float(w) for w in args.weights.split(",")):
        synth = make_synthesizer(build(cfg.synthesis.synthesizer, "synthesis.synthesizer"), teacher, data, cfg.seed,
                                 diversity_weight=weight)
        if not rows:  # real images, judged as the dreams are
            real = []
            for x, y in data.with_batch_size(args.batch_size).val_dataloader():
                real.append(figures(synth.quality(data.model_input(x), y)))
                if len(real) == args.batches:
                    break
            rows.append(("real validation images", mean(real)))
        dreams = []
        for _ in range(2 + args.batches):
            synth.synthesize(args.batch_size)
            dreams.append(figures(synth.stats))
        rows.append((f"dreams, diversity_weight={weight:g}", mean(dreams[2:])))
        print(rows[-1], flush=True)
    lines = ["# Within-class similarity of real images and of dreams", "",
             f"Command: `.venv/bin/python experiments/dream_similarity.py {' '.join(sys.argv[1:])}`; teacher "
             f"{100 * info['acc']:.2f}% (cifar10_cpu_reduced, teacher.seed=0); {args.batches} batches of "
             f"{args.batch_size} each (dreams: after two more).", "",
             "| images | within-class similarity | diversity | teacher's confidence | teacher's agreement |",
             "|---|---|---|---|---|"]
    lines += [f"| {name} | {r['within']:.3f} | {r['diversity']:.3f} | {r['confidence']:.3f} | {r['agreement']:.3f} |"
              for name, r in rows]
    out = ROOT / "experiments" / "results" / "dream_similarity"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
