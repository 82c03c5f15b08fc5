import pytest
import torch

from dfkd.synthesis import DeepInversion, Noise, SyntheticDataModule


def _module(teacher, data, cls=Noise, **pool):
    synth = cls(teacher=teacher, image_shape=data.image_shape, num_classes=data.num_classes,
                pixel_bounds=data.pixel_bounds(), **({"iterations": 2} if cls is DeepInversion else {}))
    settings = dict(kd_batch_size=32, batch_size=64, size=192, initial_batches=2, refresh_every=3,
                    steps_per_epoch=10)
    settings.update(pool)
    return SyntheticDataModule(synth, **settings)


def test_batches_have_the_right_shape_targets_and_device(digits_teacher):
    teacher, data = digits_teacher
    dm = _module(teacher, data, cls=DeepInversion)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == 10 == len(dm.train_dataloader())
    for x, y in batches:
        assert x.shape == (32, 1, 8, 8) and x.dtype == torch.float32
        assert y.shape == (32,) and y.dtype == torch.long and 0 <= y.min() and y.max() < 10
        assert x.device == next(teacher.parameters()).device


def test_pool_is_refreshed_and_bounded(digits_teacher):
    teacher, data = digits_teacher
    dm = _module(teacher, data)
    dm.setup("fit")
    stream = iter(dm.train_dataloader())
    next(stream)
    assert dm.refreshes == 2 and len(dm.images) == 128          # the initial batches
    first = dm.images[:64].clone()
    for _ in range(9):
        next(stream)
    # steps 3, 6, 9 each added a batch; the pool keeps the newest 192 images
    assert dm.refreshes == 5 and dm.images_made == 320 and len(dm.images) == 192
    assert not any(torch.equal(first, dm.images[i:i + 64]) for i in range(0, 192, 64))


def test_pool_survives_a_checkpoint_round_trip(digits_teacher):
    teacher, data = digits_teacher
    dm = _module(teacher, data)
    dm.setup("fit")
    next(iter(dm.train_dataloader()))
    state = dm.state_dict()
    restored = _module(teacher, data)
    restored.load_state_dict(state)
    assert torch.equal(restored.images, dm.images) and restored.steps == dm.steps
    next(iter(restored.train_dataloader()))
    assert restored.refreshes == dm.refreshes, "a restored pool is used, not dreamed again"


def test_ranks_dream_different_images(digits_teacher):
    teacher, data = digits_teacher

    class FakeTrainer:
        def __init__(self, rank):
            self.global_rank = rank

    pools = []
    for rank in (0, 1):
        dm = _module(teacher, data)
        dm.trainer = FakeTrainer(rank)
        dm.setup("fit")
        next(iter(dm.train_dataloader()))
        pools.append(dm.images)
    assert not torch.equal(pools[0], pools[1])


@pytest.mark.parametrize("shift, reset, augment", [("roll", False, "none"), ("crop", True, "trivial")])
def test_a_resumed_stream_goes_on_exactly_where_the_checkpoint_left_it(digits_teacher, shift, reset, augment):
    """After a checkpoint round trip the next KD batches and the next dreams, including the fast
    synthesizer's meta-learned generator, are the ones the uninterrupted run gets (also with
    per-dream crops with TrivialAugment, and a generator whose input layer restarts every batch)."""
    from dfkd.synthesis import FastSynthesizer

    teacher, data = digits_teacher

    def fast_module():
        synth = FastSynthesizer(teacher=teacher, image_shape=data.image_shape, num_classes=data.num_classes,
                                pixel_bounds=data.pixel_bounds(), g_steps=1, warmup_steps=2,
                                reset_input_layer=reset)
        return SyntheticDataModule(synth, kd_batch_size=16, batch_size=32, size=96, initial_batches=1,
                                   refresh_every=2, steps_per_epoch=4, shift=shift, jitter=1, augment=augment)

    run = fast_module()
    run.setup("fit")
    stream = iter(run.train_dataloader())
    for _ in range(3):
        next(stream)
    state = run.state_dict()
    resumed = fast_module()
    resumed.setup("fit")            # Lightning calls setup first, then load_state_dict
    resumed.load_state_dict(state)
    later = [next(stream), *list(iter(run.train_dataloader()))[:3]]
    again = list(iter(resumed.train_dataloader()))[:4]
    for (x, y), (x2, y2) in zip(later, again):
        assert torch.equal(y, y2) and torch.allclose(x, x2, atol=1e-6)
    assert resumed.refreshes == run.refreshes and resumed.synthesizer.batches == run.synthesizer.batches


def test_crop_shifts_each_dream_on_its_own_and_roll_the_whole_batch(digits_teacher):
    """``pool.shift=crop`` crops every zero-padded dream at its own offset, as real-data training
    does; ``roll`` moves the whole batch together. Dreams of all ones show the offsets: a crop
    brings zero borders that differ from image to image, a roll none."""
    teacher, data = digits_teacher
    batches = {}
    for shift in ("roll", "crop"):
        dm = _module(teacher, data, shift=shift, jitter=2, flip=False, kd_batch_size=64)
        dm.setup("fit")
        next(iter(dm.train_dataloader()))
        dm.images = torch.ones_like(dm.images)
        batches[shift] = dm.sample()[0]
    assert torch.equal(batches["roll"], torch.ones_like(batches["roll"]))
    masks = (batches["crop"] == 0).flatten(1)
    assert masks.any(1).float().mean() > 0.5, "most crops bring in some padding"
    assert len({tuple(m.tolist()) for m in masks}) > 5, "the offsets differ from image to image"


def test_trivial_augment_changes_each_dream_on_its_own_within_the_valid_pixels(digits_teacher):
    """``pool.augment=trivial``: one TrivialAugment operation per dream, so the KD batch differs
    from the plain one image by image (not one operation for the whole batch), every pixel stays
    in the data's valid range, and the pool's own random stream decides it: the global one
    neither decides nor moves."""
    teacher, data = digits_teacher
    low, high = (b.view(1, -1, 1, 1) for b in data.pixel_bounds())
    batches = {}
    for augment, global_seed in (("none", 0), ("trivial", 1), ("trivial again", 2)):
        dm = _module(teacher, data, augment=augment.split()[0], jitter=0, flip=False, kd_batch_size=64)
        dm.setup("fit")
        dm.refresh()  # the same pool for each, and no KD batch drawn yet: the same dreams sampled
        torch.manual_seed(global_seed)
        state = torch.random.get_rng_state()
        batches[augment] = dm.sample()[0]
        assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(batches["trivial"], batches["trivial again"])
    plain, augmented = batches["none"], batches["trivial"]
    assert (augmented >= low - 1e-5).all() and (augmented <= high + 1e-5).all()
    changed = (augmented - plain).abs().flatten(1).amax(1) > 0.1 * (high - low).max()
    assert 0.3 < changed.float().mean() < 1.0, "most dreams are changed, and some ops (identity) leave one as it was"


def test_an_unknown_shift_or_a_negative_jitter_is_refused_naming_the_setting(digits_teacher):
    from dfkd.errors import DfkdError

    teacher, data = digits_teacher
    with pytest.raises(DfkdError, match=r"recovery\.pool\.shift='translate' is unknown"):
        _module(teacher, data, shift="translate")
    with pytest.raises(DfkdError, match=r"recovery\.pool\.jitter=-1 must be >= 0"):
        _module(teacher, data, jitter=-1)
    with pytest.raises(DfkdError, match=r"recovery\.pool\.augment='autoaugment' is unknown"):
        _module(teacher, data, augment="autoaugment")
