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
