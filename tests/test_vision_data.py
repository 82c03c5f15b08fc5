import pickle

import numpy as np
import pytest
import torch
from torchvision import datasets

from dfkd.data import CIFARDataModule, ImageFolderDataModule
from dfkd.errors import DfkdError


def test_image_folder_reads_a_tree(image_tree):
    dm = ImageFolderDataModule(root=str(image_tree), num_classes=3, image_size=16, batch_size=4,
                               eval_batch_size=6)
    dm.setup()
    assert len(dm.train_set) == 18 and len(dm.test_set) == 6
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (6, 3, 16, 16) and x.dtype == torch.float32 and y.tolist() == [0, 0, 1, 1, 2, 2]
    low, high = dm.pixel_bounds()
    assert x.min() >= low.min() - 1e-5 and x.max() <= high.max() + 1e-5
    x, _ = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 16, 16)


def test_image_folder_refuses_a_wrong_class_count(image_tree):
    with pytest.raises(DfkdError, match=r"has 3 classes, but data\.num_classes=10"):
        ImageFolderDataModule(root=str(image_tree), num_classes=10, image_size=16).setup()


def test_missing_image_folder_explains_the_layout(tmp_path):
    with pytest.raises(DfkdError, match=r"data\.root=.* is not an ImageFolder tree.*<class>"):
        ImageFolderDataModule(root=str(tmp_path / "nothing"), num_classes=3).setup()


def test_missing_cifar_says_how_to_get_it(tmp_path):
    with pytest.raises(DfkdError, match=r"data\.download=true.*cifar-10-batches-py"):
        CIFARDataModule(root=str(tmp_path), num_classes=10).setup()


def _fake_cifar(root, n=20):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 "labels": [i % 10 for i in range(n)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)


def test_cifar_reader_on_a_tiny_copy(tmp_path, monkeypatch):
    _fake_cifar(tmp_path)
    # the md5 sums of the real archive cannot match a hand-made copy
    monkeypatch.setattr(datasets.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(datasets.cifar, "check_integrity", lambda *args: True)
    dm = CIFARDataModule(root=str(tmp_path), num_classes=10, batch_size=10, eval_batch_size=20,
                         train_subset=50)
    dm.setup()
    assert len(dm.train_set) == 50 and len(dm.test_set) == 20
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (20, 3, 32, 32) and sorted(set(y.tolist())) == list(range(10))
    assert dm.mean == (0.4914, 0.4822, 0.4465)
