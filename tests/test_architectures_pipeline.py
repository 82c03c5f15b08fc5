"""One small step of the whole pipeline for every architecture, on a tiny ImageFolder tree."""

import pytest

from dfkd.run import run

pytestmark = pytest.mark.slow

# The code paths, not quality: a 1-epoch teacher need not learn (teacher.min_accuracy=0 keeps it).
# Per-layer pruning: global pruning of such a barely trained width-4 network can empty a whole layer,
# which is refused (tests/test_pruning.py).
TINY = ["data=image_folder", "data.num_classes=3", "data.image_size=32", "data.batch_size=6",
        "data.num_workers=0", "teacher.epochs=1", "teacher.min_accuracy=0", "pruning.ratio=0.8",
        "pruning.scope=layer",
        "recovery.steps=2",
        "recovery.batch_size=4", "recovery.val_every_n_steps=2", "synthesis.synthesizer.warmup_steps=2",
        "synthesis.synthesizer.g_steps=1",
        "recovery.pool.batch_size=6", "recovery.pool.size=12", "recovery.pool.initial_batches=1",
        "recovery.pool.refresh_every=1"]


@pytest.mark.parametrize("model", ["resnet18", "resnet34", "resnet50", "mobilenetv2", "vgg16"])
def test_each_architecture_runs_the_pipeline(make_cfg, image_tree, tmp_path, model):
    width = "model.width_mult=0.25" if model == "mobilenetv2" else "model.width=4"
    results = run(make_cfg(f"model={model}", width, f"data.root={image_tree}", *TINY,
                           f"paths.cache_dir={tmp_path / 'cache'}"))
    assert results["config"]["model"] == model
    assert results["synthesis"]["synthesized_images"] >= 12
    assert results["recovered"]["sparsity"] >= 0.8 - 1e-3
    assert (tmp_path / "student.pt").is_file()


def test_custom_model_with_checkpoint(make_cfg, image_tree, tmp_path):
    """A teacher of one's own, judged on a held-out folder alone (no train/ folder): its very
    weights are what is pruned (learning rate 0: the student keeps them), and a normalization
    left to the 0.5 guess is reported."""
    import shutil

    import torch

    from dfkd.models.cifar import VGG16BN

    torch.manual_seed(123)  # not the weights teacher.seed would give
    mine = VGG16BN(num_classes=3, width=4)
    path = tmp_path / "mine.pt"
    torch.save(mine.state_dict(), path)
    held_out = tmp_path / "held_out"
    shutil.copytree(image_tree / "test", held_out / "test")
    results = run(make_cfg("model=custom", "model.path=dfkd.models.cifar.VGG16BN",
                           "model.kwargs={num_classes: 3, width: 4}", f"teacher.checkpoint={path}",
                           *TINY, f"data.root={held_out}", "recovery.optimizer.lr=0"))
    assert results["teacher"]["source"] == str(path)
    # no data.mean / data.std given: the 0.5 guess is said under the results, not passed over
    assert any("data.mean and data.std were not set" in w for w in results["warnings"])
    student = torch.load(tmp_path / "student.pt")
    for name, weight in mine.state_dict().items():
        if name.endswith("weight") and weight.dim() > 1:  # conv and linear: the kept weights are the teacher's
            kept = student[name] != 0
            assert kept.any() and torch.equal(student[name][kept], weight[kept]), name


def test_missing_required_settings_are_named(make_cfg):
    from dfkd.errors import DfkdError

    with pytest.raises(DfkdError, match=r"need a value: data\.root"):
        run(make_cfg("data=image_folder"))
    with pytest.raises(DfkdError, match=r"need a value: model\.path"):
        run(make_cfg("model=custom"))
