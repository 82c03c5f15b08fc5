import pickle

import numpy as np
import pytest
import torch
from torchvision import datasets

from dfkd.data import CIFARDataModule, ImageFolderDataModule
from dfkd.data.base import random_crop_flip
from dfkd.errors import DfkdError


@pytest.mark.parametrize("in_memory", [True, False])
def test_image_folder_reads_a_tree(image_tree, in_memory):
    dm = ImageFolderDataModule(root=str(image_tree), num_classes=3, image_size=16, batch_size=4,
                               eval_batch_size=6, in_memory=in_memory)
    dm.setup()
    assert len(dm.train_set) == 18 and len(dm.test_set) == 6
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (6, 3, 16, 16) and x.dtype == torch.uint8 and y.tolist() == [0, 0, 1, 1, 2, 2]
    x = dm.model_input(x)  # what the model sees: scaled and normalized
    assert x.dtype == torch.float32
    low, high = dm.pixel_bounds()
    assert x.min() >= low.min() - 1e-5 and x.max() <= high.max() + 1e-5
    # each class's dominant colour survives decoding (class k is brightest in channel k)
    assert x.mean((2, 3)).argmax(1).tolist() == y.tolist()
    x, _ = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 16, 16)


def test_image_folder_resizes_to_image_size_and_takes_a_fixed_subset(image_tree):
    dm = ImageFolderDataModule(root=str(image_tree), num_classes=3, image_size=8, train_subset=9)
    dm.setup()
    assert len(dm.train_set) == 9 and dm.train_set[0][0].shape == (3, 8, 8)
    assert sorted({int(dm.train_set[i][1]) for i in range(9)}) == [0, 1, 2]


def test_a_corrupt_image_is_named(tmp_path):
    from conftest import write_image_tree

    root = write_image_tree(tmp_path / "tree")
    (root / "train" / "class_1" / "broken.png").write_bytes(b"not an image")
    dm = ImageFolderDataModule(root=str(root), num_classes=3, image_size=16)
    dm.setup()
    with pytest.raises(DfkdError, match=r"broken\.png could not be read as an image"):
        dm.train_set


@pytest.mark.parametrize("in_channels", [1, 3])
def test_a_tree_of_mixed_formats_bit_depths_and_colour_types_is_read(tmp_path, in_channels):
    """A user's own folder holds what cameras and tools write: BMP, TIFF, PPM, lossless WebP,
    16-bit grey PNG, RGBA PNG, palette GIF. Each is read at data.in_channels, 8 bits, its picture
    intact (compared with the colour the file was written from)."""
    from PIL import Image

    colour = np.zeros((16, 16, 3), dtype=np.uint8)
    colour[:8] = (200, 40, 40)  # top half red, bottom half blue
    colour[8:] = (30, 30, 220)
    grey = np.array(Image.fromarray(colour).convert("L"))
    files = {"a.bmp": lambda p: Image.fromarray(colour).save(p),
             "b.tif": lambda p: Image.fromarray(colour).save(p),
             "c.ppm": lambda p: Image.fromarray(colour).save(p),
             "d.webp": lambda p: Image.fromarray(colour).save(p, lossless=True),
             "e.png": lambda p: Image.fromarray(grey.astype(np.uint16) * 257).save(p),  # 16-bit grey
             "f.png": lambda p: Image.fromarray(colour).convert("RGBA").save(p),
             "g.gif": lambda p: Image.fromarray(colour).save(p),
             "h.pgm": lambda p: Image.fromarray(grey).save(p)}
    for split in ("train", "test"):
        folder = tmp_path / split / "only"
        folder.mkdir(parents=True)
        for name, write in files.items():
            write(folder / name)
    dm = ImageFolderDataModule(root=str(tmp_path), num_classes=1, in_channels=in_channels, image_size=16,
                               mean=(0.5,) * in_channels, std=(0.5,) * in_channels)
    images = torch.stack([image for image, _ in dm.test_set])
    assert images.shape == (len(files), in_channels, 16, 16) and images.dtype == torch.uint8
    expected = torch.from_numpy(grey if in_channels == 1 else colour).float().reshape(16, 16, -1).permute(2, 0, 1)
    for name, image in zip(sorted(files), images):
        if in_channels == 3 and name in ("e.png", "h.pgm"):  # grey files: the same grey in every channel
            want = torch.from_numpy(grey).float().expand(3, 16, 16)
        else:
            want = expected
        assert (image.float() - want).abs().max() <= 3, name


def test_one_number_for_mean_and_std_means_every_channel(image_tree):
    """data.mean=0.5 data.std=0.25 on a colour tree: the same normalization as the lists."""
    one = ImageFolderDataModule(root=str(image_tree), num_classes=3, mean=0.5, std=0.25)
    lists = ImageFolderDataModule(root=str(image_tree), num_classes=3, mean=[0.5] * 3, std=[0.25] * 3)
    assert one.mean == lists.mean == (0.5,) * 3 and one.std == lists.std == (0.25,) * 3
    assert one.normalization_given


def test_train_augmentation_crops_and_flips_on_the_batch_device():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    out = random_crop_flip(x, padding=2, flip=True)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    moved = flipped = 0
    for image, result in zip(padded, out):
        # every output is one 8x8 window of the padded image, mirrored or not
        windows = [(dy, dx, m) for dy in range(5) for dx in range(5) for m in (False, True)
                   if torch.equal(result, (lambda w: w.flip(2) if m else w)(image[:, dy:dy + 8, dx:dx + 8]))]
        assert windows, "not a crop of the padded image"
        moved += all((dy, dx) != (2, 2) for dy, dx, _ in windows)
        flipped += all(m for _, _, m in windows)
    assert moved > 32 and 16 < flipped < 48  # offsets and mirrors vary per image
    no_flip = random_crop_flip(x, padding=0, flip=False)
    assert torch.equal(no_flip, x)
    # with a generator of its own (the dream pool's): reproducible, and the global stream untouched
    state = torch.random.get_rng_state()
    a = random_crop_flip(x, 2, True, generator=torch.Generator().manual_seed(5))
    b = random_crop_flip(x, 2, True, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and not torch.equal(a, random_crop_flip(x, 2, True, torch.Generator().manual_seed(6)))
    assert torch.equal(torch.random.get_rng_state(), state)


def test_model_input_augments_only_for_training(image_tree):
    dm = ImageFolderDataModule(root=str(image_tree), num_classes=3, image_size=16)
    dm.setup()
    x, _ = next(iter(dm.test_dataloader()))
    assert torch.equal(dm.model_input(x), dm.model_input(x))  # evaluation: no randomness
    torch.manual_seed(0)
    assert not torch.equal(dm.model_input(x, train=True), dm.model_input(x))
    dm.augment = False
    assert torch.equal(dm.model_input(x, train=True), dm.model_input(x))


def test_image_folder_refuses_a_wrong_class_count(image_tree):
    with pytest.raises(DfkdError, match=r"has 3 classes, but data\.num_classes=10"):
        ImageFolderDataModule(root=str(image_tree), num_classes=10, image_size=16).setup()


def test_missing_image_folder_explains_the_layout(tmp_path):
    with pytest.raises(DfkdError, match=r"data\.root=.* is not an ImageFolder tree.*<class>"):
        ImageFolderDataModule(root=str(tmp_path / "nothing"), num_classes=3).setup()


def test_a_test_folder_alone_serves_and_the_train_split_is_asked_for_by_name(image_tree, tmp_path):
    """A user who may keep only a held-out set (no train/) can still evaluate; a stage that
    needs the train split says which settings do without it."""
    import shutil

    shutil.copytree(image_tree / "test", tmp_path / "test")
    data = ImageFolderDataModule(root=str(tmp_path), num_classes=3, image_size=16)
    data.setup()
    assert len(data.test_set) == 6
    with pytest.raises(DfkdError, match=r"has no train/ folder.*teacher\.checkpoint=PATH.*data\.val_size=0"):
        data.train_set


def test_normalization_needs_one_value_per_channel_and_a_guess_is_marked(tmp_path):
    with pytest.raises(DfkdError, match=r"data\.mean=\[0\.5, 0\.5, 0\.5\].*one value per image channel.*"
                                        r"data\.in_channels=1"):
        ImageFolderDataModule(root=str(tmp_path), num_classes=3, in_channels=1, mean=[0.5] * 3, std=[0.5] * 3)
    with pytest.raises(DfkdError, match=r"give both.*or neither"):
        ImageFolderDataModule(root=str(tmp_path), num_classes=3, mean=[0.4] * 3)
    with pytest.raises(DfkdError, match=r"every std above 0"):
        ImageFolderDataModule(root=str(tmp_path), num_classes=3, mean=[0.5] * 3, std=[0.5, 0.0, 0.5])
    guessed = ImageFolderDataModule(root=str(tmp_path), num_classes=3)
    assert guessed.normalization == "guessed" and guessed.mean == (0.5, 0.5, 0.5)
    assert ImageFolderDataModule(root=str(tmp_path), num_classes=3, mean=[0.4] * 3, std=[0.2] * 3).normalization_given
    assert CIFARDataModule(root=str(tmp_path), num_classes=10).normalization_given  # CIFAR's own statistics


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
    assert x.shape == (20, 3, 32, 32) and x.dtype == torch.uint8 and sorted(set(y.tolist())) == list(range(10))
    assert dm.mean == (0.4914, 0.4822, 0.4465)


def test_validation_split_is_carved_from_train_fixed_and_disjoint():
    from dfkd.data import DigitsDataModule

    def sizes_and_val(**kwargs):
        dm = DigitsDataModule(val_size=200, **kwargs)
        return len(dm.train_set), len(dm.val_set), dm.val_set.indices, dm.train_set.indices

    n_train, n_val, val, train = sizes_and_val()
    assert (n_train, n_val) == (1347 - 200, 200) and not set(val) & set(train)
    assert sizes_and_val()[2] == val                        # the same images every run
    assert sizes_and_val(split_seed=1)[2] != val            # another seed, another choice
    dm = DigitsDataModule(val_size=200)
    assert len(dm.val_dataloader().dataset) == 200          # curves are drawn on validation
    assert len(DigitsDataModule().val_dataloader().dataset) == 450  # without one, on test
    from dfkd.synthesis import Noise, SyntheticDataModule

    dreams = SyntheticDataModule(Noise(teacher=None, image_shape=dm.image_shape, num_classes=10,
                                       pixel_bounds=dm.pixel_bounds()), real=dm)
    assert len(dreams.val_dataloader().dataset) == 200      # KD on dreams draws its curve there too


def test_scoring_on_the_validation_split_leaves_the_random_stream_alone():
    """A run scores the pruned student on validation between seeding and recovery: a loader draws
    its seed from the global stream, which recovery on real data then shuffles and crops with."""
    from dfkd.data import DigitsDataModule
    from dfkd.evaluate import Judge
    from dfkd.models import DigitsCNN

    data = DigitsDataModule(val_size=100)
    data.setup()
    model, judge = DigitsCNN(width=4), Judge(data, torch.device("cpu"))
    before = torch.get_rng_state()
    acc = judge.val_acc(model)
    assert 0 <= acc <= 1 and torch.equal(torch.get_rng_state(), before)


def test_a_validation_split_larger_than_train_is_refused():
    from dfkd.data import DigitsDataModule

    with pytest.raises(DfkdError, match=r"data\.val_size=5000 leaves no training images"):
        DigitsDataModule(val_size=5000).train_set
