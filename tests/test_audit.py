"""python -m dfkd.audit RUN_DIR: dreams are compared with every real training image; a dream that
is a copy of one is found, genuine dreams are not taken for copies."""

import pytest
import torch
from omegaconf import OmegaConf

from dfkd.audit import audit, describe, main
from dfkd.errors import DfkdError
from dfkd.run import run

pytestmark = pytest.mark.slow


def test_audit_finds_planted_copies_and_clears_genuine_dreams(make_cfg, tmp_path, digits_teacher):
    cfg = make_cfg("recovery.steps=20")
    run(cfg)
    (tmp_path / ".hydra").mkdir(exist_ok=True)
    OmegaConf.save(cfg, tmp_path / ".hydra" / "config.yaml")  # what Hydra writes for a real run
    dreams = len(torch.load(tmp_path / "synthetic_pool.pt", weights_only=True)["images"])

    genuine = audit(tmp_path)
    assert genuine["dreams"] == dreams and genuine["train_images"] > 1000
    assert genuine["possible_copies"] == [], describe(genuine)
    assert set(genuine) >= {"pixels", "features"} and (tmp_path / "audit" / "closest_pairs.png").is_file()

    # what it must catch: five training images slipped into the saved dreams
    _, data = digits_teacher
    real = data.model_input(torch.stack([data.train_set[i][0] for i in range(5)]))
    torch.save({"images": real, "targets": torch.zeros(5, dtype=torch.long)}, tmp_path / "synthetic_pool_rank1.pt")
    planted = audit(tmp_path)
    assert planted["possible_copies"] == list(range(dreams, dreams + 5)), describe(planted)
    assert planted["pixels"]["closest"][0]["distance"] < 1e-4
    assert "POSSIBLE COPIES: 5 dreams" in describe(planted)


def test_audit_of_a_run_without_dreams_says_so(tmp_path, capsys):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("seed: 0\n")
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path)])
    assert stop.value.code == 2 and "holds no saved dreams" in capsys.readouterr().err
    with pytest.raises(DfkdError, match="not the folder of a dfkd run"):
        audit(tmp_path / "nowhere")


def test_audit_finds_every_saved_dream_and_the_real_data_where_the_run_meant_it(make_cfg, tmp_path, image_tree,
                                                                            monkeypatch):
    """A run of iterative pruning keeps dreams in round_K/ and pruning_dreams.pt too; its data.root
    was relative to where it was started (Hydra's record), and the audit runs from elsewhere; a
    moved data folder is given with --data-root."""
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / "round_1").mkdir()
    cfg = make_cfg("data=image_folder", f"data.root={image_tree.name}", "data.num_classes=3", "data.image_size=16",
                   "data.num_workers=0")
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    OmegaConf.save({"hydra": {"runtime": {"cwd": str(image_tree.parent)}}}, run_dir / ".hydra" / "hydra.yaml")
    noise = torch.rand(4, 3, 16, 16)
    for file, n in (("synthetic_pool.pt", 3), ("round_1/synthetic_pool.pt", 2), ("pruning_dreams.pt", 1)):
        torch.save({"images": noise[:n], "targets": torch.zeros(n, dtype=torch.long)}, run_dir / file)
    monkeypatch.chdir(tmp_path)  # not where the run started: a relative data.root means nothing here

    found = audit(run_dir, pairs=2)  # no teacher in the cache: pixels only
    assert found["files"] == {"synthetic_pool.pt": 3, "round_1/synthetic_pool.pt": 2, "pruning_dreams.pt": 1}
    assert found["dreams"] == 6 and found["train_images"] == 18 and "features" not in found

    OmegaConf.save({"hydra": {"runtime": {"cwd": str(tmp_path / "moved")}}}, run_dir / ".hydra" / "hydra.yaml")
    with pytest.raises(DfkdError, match=r"cannot read it: data.root=.*--data-root PATH"):
        audit(run_dir)
    assert audit(run_dir, data_root=str(image_tree))["train_images"] == 18
    with pytest.raises(DfkdError, match=r"--pairs=0 must be"):
        audit(run_dir, pairs=0, data_root=str(image_tree))
