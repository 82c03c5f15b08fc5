import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dfkd.errors import DfkdError
from dfkd.models import DigitsCNN, batchnorm_layers
from dfkd.synthesis import DeepInversion, FastSynthesizer, Noise, bn_statistics
from dfkd.synthesis.bn_stats import bn_loss, input_statistics, updated_history
from dfkd.synthesis.fast import Generator


def test_bn_statistics_loss_matches_hand_computation():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3)
    bn.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
    bn.running_var.copy_(torch.tensor([1.0, 4.0, 0.25]))
    model = nn.Sequential(conv, bn).eval()
    x = torch.randn(5, 2, 4, 4)

    feats = conv(x).detach()                    # what BN sees
    n = feats.shape[0] * feats.shape[2] * feats.shape[3]
    mean = feats.sum(dim=(0, 2, 3)) / n
    var = ((feats - mean.view(1, 3, 1, 1)) ** 2).sum(dim=(0, 2, 3)) / n  # biased, as BN uses
    papers = ((mean - bn.running_mean) ** 2).sum().sqrt() + ((var - bn.running_var) ** 2).sum().sqrt()
    scale = bn.running_var + bn.eps
    expected = (((mean - bn.running_mean) ** 2 / scale).mean().sqrt()
                + ((var - bn.running_var) ** 2 / scale ** 2).mean().sqrt())
    with bn_statistics(model, "l2") as hooks:
        model(x)
        assert torch.allclose(bn_loss(hooks), papers, rtol=1e-5)

    with bn_statistics(model) as hooks:  # normalized: per channel, in units of the running statistics
        model(x)
        assert len(hooks) == 1
        assert torch.allclose(bn_loss(hooks), expected, rtol=1e-5)
        assert torch.allclose(bn_loss(hooks, first_multiplier=3.0), 3 * expected, rtol=1e-5)
    deep = nn.Sequential(conv, bn, nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    with bn_statistics(deep) as hooks:
        deep(x)
        per_layer = [h.loss for h in hooks]
        # the mean over layers: one bn_weight fits shallow and deep teachers
        assert torch.allclose(bn_loss(hooks), (per_layer[0] + per_layer[1]) / 2)
        assert torch.allclose(bn_loss(hooks, first_multiplier=3.0), (3 * per_layer[0] + per_layer[1]) / 2)
    assert not bn._forward_hooks, "hooks must be removed when the context ends"


@pytest.mark.parametrize("bn, shape", [(nn.BatchNorm2d, (64, 4, 8, 8)), (nn.BatchNorm1d, (256, 4)),
                                       (nn.BatchNorm1d, (64, 4, 16))])
def test_bn_statistics_stay_accurate_when_the_mean_dwarfs_the_spread(bn, shape):
    """The hooks take the variance about the batch mean held constant (faster than x.var); in
    fp32 its loss and gradient must match float64's two-pass variance for channels whose mean is
    100 times their spread (a one-pass E[x^2] - E[x]^2 is off by 0.15% of the largest gradient
    there; the trained teachers' BN inputs measured at most 7), for image and vector BN layers."""
    torch.manual_seed(0)
    bn = bn(4).eval()
    bn.running_mean.copy_(torch.tensor([50.0, -50.0, 0.0, 5.0]))
    bn.running_var.copy_(torch.tensor([0.25, 0.25, 1.0, 0.01]))
    per_channel = (1, 4, *[1] * (len(shape) - 2))
    x = (torch.randn(shape) * torch.tensor([0.5, 0.6, 1.0, 0.2]).view(per_channel)
         + torch.tensor([50.0, -50.2, 0.1, 5.0]).view(per_channel)).requires_grad_(True)
    dims = [0, *range(2, len(shape))]
    for distance in ("normalized", "l2"):
        with bn_statistics(bn, distance) as hooks:
            bn(x)
            loss = hooks[0].loss
        grad, = torch.autograd.grad(loss, x)
        x64 = x.detach().double().requires_grad_(True)
        mean, var = x64.mean(dims), x64.var(dims, unbiased=False)
        rm, rv = bn.running_mean.double(), bn.running_var.double()
        if distance == "l2":
            expected = torch.linalg.vector_norm(mean - rm) + torch.linalg.vector_norm(var - rv)
        else:
            scale = rv + bn.eps
            expected = ((mean - rm) / scale.sqrt()).pow(2).mean().sqrt() + ((var - rv) / scale).pow(2).mean().sqrt()
        grad64, = torch.autograd.grad(expected, x64)
        assert abs(loss.item() - expected.item()) < 1e-3 * expected.item(), distance
        assert (grad.double() - grad64).abs().max() < 1e-4 * grad64.abs().max(), distance


def test_normalized_bn_distance_does_not_grow_with_width_or_scale():
    """One bn_weight must mean the same on every network: the normalized distance of a layer
    whose inputs are off by the same amount in every channel is the same for 8 or 2,048 channels
    and for activations of any scale; the papers' L2 distance grows with both."""
    def gap(channels, scale, distance):
        bn = nn.BatchNorm2d(channels).eval()
        bn.running_var.fill_(scale ** 2)
        x = scale * (torch.randn(64, channels, 4, 4) * 2 + 1)  # mean off by 1 std, variance x4
        with bn_statistics(bn, distance) as hooks:
            bn(x)
            return hooks[0].loss.item()

    torch.manual_seed(0)
    small, wide, scaled = gap(8, 1.0, "normalized"), gap(2048, 1.0, "normalized"), gap(8, 10.0, "normalized")
    assert abs(small - 4.0) < 0.3 and abs(wide - 4.0) < 0.1 and abs(scaled - small) < 0.3
    assert gap(2048, 1.0, "l2") > 10 * gap(8, 1.0, "l2")
    assert gap(8, 10.0, "l2") > 50 * gap(8, 1.0, "l2")


def test_hooks_are_removed_even_after_an_error():
    model = DigitsCNN(width=4).eval()
    try:
        with bn_statistics(model):
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert all(not m._forward_hooks for m in model.modules())


def _synth(teacher, data, cls=DeepInversion, **kwargs):
    return cls(teacher=teacher, image_shape=data.image_shape, num_classes=data.num_classes,
               pixel_bounds=data.pixel_bounds(), **kwargs)


def test_dreams_match_targets_and_bn_statistics_better_than_noise(digits_teacher):
    teacher, data = digits_teacher
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    di = _synth(teacher, data, iterations=100, seed=1)
    images, targets = di.synthesize(100)
    noise_images, _ = _synth(teacher, data, cls=Noise, seed=1).synthesize(100)

    assert images.shape == (100, 1, 8, 8) and targets.dtype == torch.long
    # measured at 100 iterations: 0.61 with the default bn_weight 30 (0.94 with 1, whose dreams
    # distil worse: experiments/README.md); noise: about 0.1
    assert di.stats["synthesis/target_acc"] >= 0.5
    with torch.no_grad(), bn_statistics(teacher) as hooks:
        teacher(noise_images)
        noise_bn = bn_loss(hooks).item()
    assert di.stats["synthesis/bn_loss"] < 0.5 * noise_bn
    low, high = data.pixel_bounds()
    assert images.min() >= low.min() - 1e-6 and images.max() <= high.max() + 1e-6
    # the teacher is untouched: eval mode, same weights and BN statistics
    assert not teacher.training
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


def test_targets_are_balanced_and_synthesis_is_deterministic(digits_teacher):
    teacher, data = digits_teacher
    a_img, a_t = _synth(teacher, data, iterations=3, seed=7).synthesize(40)
    b_img, b_t = _synth(teacher, data, iterations=3, seed=7).synthesize(40)
    c_img, _ = _synth(teacher, data, iterations=3, seed=8).synthesize(40)
    assert torch.bincount(a_t, minlength=10).tolist() == [4] * 10
    assert torch.equal(a_t, b_t) and torch.equal(a_img, b_img)
    assert not torch.equal(a_img, c_img)


def test_every_iterate_is_scored_and_in_range_the_start_and_the_last_included(digits_teacher):
    """The lowest-loss iterate is returned: with one iteration, the image after that step (scored
    after the loop), never the raw noise it started from, which lies outside the pixel range."""
    teacher, data = digits_teacher
    di = _synth(teacher, data, iterations=1, seed=3)
    images, _ = di.synthesize(20)
    start = _synth(teacher, data, iterations=1, seed=3).noise(20)
    low, high = data.pixel_bounds()
    assert start.max() > high.max() + 0.5, "the test needs a start outside the pixel range"
    assert images.min() >= low.min() - 1e-6 and images.max() <= high.max() + 1e-6
    assert not torch.allclose(images, start.clamp(low.min(), high.max()))  # the step was taken and kept


def test_building_a_synthesizer_or_a_model_leaves_the_accelerators_random_streams_alone(digits_teacher,
                                                                                        monkeypatch):
    """Seeding the generators' or a model's initial weights touches the CPU's stream only (and
    restores it): torch.manual_seed would also reseed every GPU's stream, which the run's own
    seed set."""
    from omegaconf import OmegaConf

    from dfkd.teacher import build_model
    teacher, data = digits_teacher
    reseeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: reseeded.append(seed))
    cpu = torch.random.get_rng_state()
    _synth(teacher, data, cls=FastSynthesizer, warmup_steps=1, seed=5)
    build_model(OmegaConf.create({"_target_": "dfkd.models.create", "name": "digits_cnn", "num_classes": 10,
                                  "in_channels": 1}), seed=5)
    assert reseeded == [] and torch.equal(torch.random.get_rng_state(), cpu)


def test_bn_momentum_matches_the_moving_average_of_the_batches_to_the_running_statistics():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3)
    model = nn.Sequential(conv, bn).eval()
    a, b = torch.randn(5, 2, 4, 4), torch.randn(5, 2, 4, 4) + 1.0

    def stats(x):
        feats = conv(x).detach()
        return feats.mean(dim=(0, 2, 3)), feats.var(dim=(0, 2, 3), unbiased=False)

    def distance(mean, var):
        scale = bn.running_var + bn.eps
        return (((mean - bn.running_mean) ** 2 / scale).mean().sqrt()
                + ((var - bn.running_var) ** 2 / scale ** 2).mean().sqrt())

    with bn_statistics(model) as hooks:
        model(a)
        history = updated_history(hooks, None, 0.9)      # the first batch alone
    (mean_a, var_a), (mean_b, var_b) = stats(a), stats(b)
    assert torch.allclose(history[0][0], mean_a, atol=1e-6) and torch.allclose(history[0][1], var_a, atol=1e-6)
    with bn_statistics(model, history=history, momentum=0.9) as hooks:
        model(b)
        blended = distance(0.1 * mean_b + 0.9 * mean_a, 0.1 * var_b + 0.9 * var_a)
        assert torch.allclose(bn_loss(hooks), blended, rtol=1e-5)
        assert not torch.allclose(bn_loss(hooks), distance(mean_b, var_b), rtol=1e-2)
        history = updated_history(hooks, history, 0.9)
    assert torch.allclose(history[0][0], 0.9 * mean_a + 0.1 * mean_b, atol=1e-6)
    with bn_statistics(model, history=history, momentum=0.0) as hooks:  # 0: each batch alone
        model(b)
        assert torch.allclose(bn_loss(hooks), distance(mean_b, var_b), rtol=1e-5)


def test_synthesizers_carry_the_bn_moving_average_across_batches_and_checkpoints(digits_teacher):
    teacher, data = digits_teacher
    fast = _synth(teacher, data, cls=FastSynthesizer, warmup_steps=5, g_steps=2, bn_momentum=0.9)
    fast.synthesize(20)
    first = [m.clone() for m, _ in fast.bn_history]
    fast.synthesize(20)
    assert len(fast.bn_history) == len(batchnorm_layers(teacher))
    assert not torch.allclose(fast.bn_history[0][0], first[0])  # the second batch moved it
    resumed = _synth(teacher, data, cls=FastSynthesizer, warmup_steps=5, g_steps=2, bn_momentum=0.9)
    resumed.load_state_dict(fast.state_dict())
    assert all(torch.equal(m, n) for (m, _), (n, _) in zip(resumed.bn_history, fast.bn_history))
    assert _synth(teacher, data, iterations=2).bn_history is None  # off by default: nothing kept
    with pytest.raises(DfkdError, match=r"synthesis\.synthesizer\.bn_momentum=1"):
        _synth(teacher, data, iterations=2, bn_momentum=1)


def test_fast_reset_input_layer_restarts_the_input_layer_for_each_new_batch(digits_teacher):
    """``reset_input_layer``: every batch after the warm-up adapts from a freshly initialized input
    layer (a per-batch variant of Fang et al.'s reset_l0), the same fresh layer for the same seed,
    drawn from the synthesizer's own stream (the global one is untouched); the warm-up batch is as
    without it."""
    teacher, data = digits_teacher
    runs = {}
    for name, reset in (("plain", False), ("reset", True), ("reset_again", True)):
        fast = _synth(teacher, data, cls=FastSynthesizer, warmup_steps=3, g_steps=1, reset_input_layer=reset)
        first, _ = fast.synthesize(16)
        project = fast.meta.project.weight.clone()
        state = torch.random.get_rng_state()
        second, _ = fast.synthesize(16)
        assert torch.equal(torch.random.get_rng_state(), state)
        runs[name] = (first, second, project, fast.meta)
    plain, reset, again = runs["plain"], runs["reset"], runs["reset_again"]
    assert torch.equal(plain[0], reset[0]) and torch.equal(plain[2], reset[2])  # the warm-up batch
    assert not torch.allclose(plain[1], reset[1])                                 # the next one restarts
    assert torch.equal(reset[1], again[1])                                        # reproducibly
    moved = reset[3].project.weight - reset[2]
    assert moved.abs().mean() > 10 * (plain[3].project.weight - plain[2]).abs().mean()


def test_fast_generators_take_turns_each_warmed_up_once_and_resumed(digits_teacher):
    """``generators=K``: K generators dream the batches in turn, each with its own warm-up on its
    first batch and its own meta-learned weights after; generator 1 is the single generator of the
    default (same first batch); a checkpoint keeps them all and refuses a different K."""
    teacher, data = digits_teacher
    single = _synth(teacher, data, cls=FastSynthesizer, warmup_steps=4, g_steps=1)
    several = _synth(teacher, data, cls=FastSynthesizer, warmup_steps=4, g_steps=1, generators=2)
    started = [copy.deepcopy(g) for g in several.generators]
    steps, batches = [], []
    for _ in range(4):
        batches.append(several.synthesize(16)[0])
        steps.append(several.stats["synthesis/g_steps"])
    assert steps == [4, 4, 1, 1]  # two warm-ups, then the few steps of a later batch
    assert torch.equal(batches[0], single.synthesize(16)[0])
    assert not torch.allclose(batches[1], single.synthesize(16)[0])  # another generator's dreams
    first, second = (dict(g.named_parameters()) for g in several.generators)
    assert not torch.allclose(first["project.weight"], second["project.weight"])
    for generator, start in zip(several.generators, started):  # each one dreamed, and learned from it
        assert not torch.allclose(generator.project.weight, start.project.weight)
    resumed = _synth(teacher, data, cls=FastSynthesizer, warmup_steps=4, g_steps=1, generators=2)
    resumed.load_state_dict(several.state_dict())
    assert resumed.batches == 4 and not resumed.first_batch
    assert all(torch.equal(a, b) for g, h in zip(resumed.generators, several.generators)
               for a, b in zip(g.state_dict().values(), h.state_dict().values()))
    with pytest.raises(DfkdError, match=r"synthesis\.synthesizer\.generators=1"):
        single.load_state_dict(several.state_dict())
    with pytest.raises(DfkdError, match=r"synthesis\.synthesizer\.generators=0"):
        _synth(teacher, data, cls=FastSynthesizer, generators=0)


@pytest.mark.slow  # two warm-ups of 200 generator steps: about 25 s
def test_fast_warmup_with_fresh_latents_dreams_from_codes_it_was_not_fitted_to(digits_teacher):
    """``warmup_latents=fresh``: the warm-up redraws the latent codes every g_steps steps, so the
    generator dreams the target classes from new codes with no step on them; the default
    (``fixed``) fits one set of codes, and new codes land on what the teacher recognizes less."""
    teacher, data = digits_teacher
    recognized = {}
    for latents in ("fixed", "fresh"):
        fast = _synth(teacher, data, cls=FastSynthesizer, warmup_steps=200, g_steps=5, bn_weight=3.0,
                      warmup_latents=latents)
        fast.synthesize(100)
        new_targets = fast.balanced_targets(300)
        with torch.no_grad():  # new codes, no step on them: what the warm-up taught the generator
            unseen = fast.render(fast.meta.eval(), fast.latents(300), new_targets)
        recognized[latents] = fast.quality(unseen, new_targets)["synthesis/target_acc"]
    # measured: 0.15 (fixed: about chance, 0.1) against 0.54 (fresh)
    assert recognized["fresh"] >= recognized["fixed"] + 0.2, recognized


def test_fast_warmup_latents_schedule_and_refusal(digits_teacher):
    """Fresh codes start every g_steps steps while a whole chunk of g_steps is left (the batch
    returned gets at least g_steps steps on its codes, as a later batch does), in the warm-up only;
    ``fixed`` never redraws; an unknown value is refused with the setting's name."""
    teacher, data = digits_teacher
    fresh = _synth(teacher, data, cls=FastSynthesizer, g_steps=5, warmup_latents="fresh")
    assert [s for s in range(1, 201) if fresh.redraws_latents_before(s, 200)] == list(range(6, 197, 5))
    assert [s for s in range(1, 13) if fresh.redraws_latents_before(s, 12)] == [6]
    fresh.batches = 1
    assert not any(fresh.redraws_latents_before(s, 5) for s in range(1, 6))
    fixed = _synth(teacher, data, cls=FastSynthesizer, g_steps=5)
    assert not any(fixed.redraws_latents_before(s, 200) for s in range(1, 201))
    with pytest.raises(DfkdError, match=r"synthesis\.synthesizer\.warmup_latents='random'"):
        _synth(teacher, data, cls=FastSynthesizer, warmup_latents="random")


def _second_class_probability(teacher, data, mix: float, **kwargs) -> float:
    """The teacher's mean probability, on 100 dreams at ``target_mix=mix``, of each dream's second
    class: the one it aimed at besides its own (for one-class dreams, another class drawn the same
    way). The synthesizer's draws are replayed to recover what each image aimed at; the dreams'
    own classes stay balanced."""
    synth = _synth(teacher, data, target_mix=mix, **kwargs)
    state = synth.generator.get_state()
    images, targets = synth.synthesize(100)
    synth.generator.set_state(state)  # the same draws again: the classes each image aimed at
    again = synth.balanced_targets(100)
    aims = (synth if mix else _synth(teacher, data, seed=0, target_mix=1.0)).mixed_targets(again)
    assert torch.bincount(targets, minlength=10).tolist() == [10] * 10
    second = aims.scatter(1, targets[:, None], 0.0).argmax(1)
    with torch.no_grad():
        return teacher(images).softmax(1)[torch.arange(100), second].mean().item()


def test_target_mix_dreams_between_two_classes(digits_teacher):
    """``target_mix``: that share of each batch is dreamed towards two classes, its own (the label
    the pool keeps, still balanced) with weight lambda ~ U(0.5, 1) and another with 1 - lambda. The
    teacher puts more of its probability on the second class than it does on one-class dreams;
    target_mix 0 draws nothing more, and a share outside [0, 1] is refused by name."""
    teacher, data = digits_teacher
    y = torch.arange(400) % 10
    plain = _synth(teacher, data)
    state = plain.generator.get_state()
    assert plain.mixed_targets(y) is y and torch.equal(plain.generator.get_state(), state)
    half = _synth(teacher, data, target_mix=0.5).mixed_targets(y)
    assert torch.allclose(half.sum(1), torch.ones(400)) and torch.equal(half.argmax(1), y)
    mixed = half.max(1).values < 1
    assert 150 <= mixed.sum() <= 250 and half.max(1).values.min() >= 0.5
    assert ((half > 0).sum(1) == 1 + mixed.long()).all()  # the second class is another one
    second_class_prob = {mix: _second_class_probability(teacher, data, mix, iterations=60, seed=4)
                         for mix in (0.0, 1.0)}
    # measured: 0.13 against 0.06
    assert second_class_prob[1.0] >= 1.5 * second_class_prob[0.0], second_class_prob
    with pytest.raises(DfkdError, match=r"synthesis\.synthesizer\.target_mix=1\.5"):
        _synth(teacher, data, target_mix=1.5)


def test_fast_synthesizer_dreams_between_two_classes(digits_teacher):
    """The fast synthesizer aims its generator and its class term at the same two-class mix: the
    teacher gives the second class more probability than on one-class dreams of the same codes."""
    teacher, data = digits_teacher
    second_class_prob = {mix: _second_class_probability(teacher, data, mix, cls=FastSynthesizer,
                                                         warmup_steps=60, seed=5)
                         for mix in (0.0, 1.0)}
    # measured: 0.11 against 0.07 (60 warm-up steps)
    assert second_class_prob[1.0] >= 1.3 * second_class_prob[0.0], second_class_prob


def test_generator_conditions_on_class_probabilities_as_on_classes():
    """The fast synthesizer's generator takes class probabilities (target_mix) as the same mix of
    its class embeddings: one-hot probabilities give exactly the class's image."""
    torch.manual_seed(0)
    gen = Generator((3, 8, 8), num_classes=5, latent_dim=4, width=4).eval()
    z, y = torch.randn(6, 4), torch.arange(6) % 5
    assert torch.allclose(gen(z, F.one_hot(y, 5).float()), gen(z, y), atol=1e-6)
    mixed = 0.7 * F.one_hot(y, 5).float() + 0.3 * F.one_hot((y + 1) % 5, 5).float()
    assert not torch.allclose(gen(z, mixed), gen(z, y), atol=1e-4)


def test_diversity_term_is_each_dreams_soft_maximum_similarity_within_its_class(digits_teacher):
    """The diversity term by hand: for each dream, t x log mean exp(cos / t) over the other dreams
    of its class, in the batch (not itself) and in the memory; a dream with no other of its class
    counts for nothing; other classes never enter."""
    teacher, data = digits_teacher
    t = 0.5
    synth = _synth(teacher, data, iterations=2, diversity_weight=1.0, diversity_temperature=t)
    f = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.0]])
    y = torch.tensor([0, 0, 1, 2])
    soft = lambda cosines: t * torch.log(torch.exp(torch.tensor(cosines) / t).mean())
    # without memory: dreams 0 and 1 see each other (cos 0.6); classes 1 and 2 have no other dream
    assert torch.allclose(synth.diversity_loss(f, y), soft([0.6]))
    synth.feature_memory = (torch.tensor([[0.0, 1.0], [-1.0, 0.0]]), torch.tensor([0, 1]))
    expected = torch.stack([soft([0.0, 0.6]), soft([0.8, 0.6]), soft([0.0])]).mean()  # dream 3: none
    assert torch.allclose(synth.diversity_loss(f, y), expected)
    # features of any length and scale: cosines
    assert torch.allclose(synth.diversity_loss(3 * f, y), expected)


def test_diversity_term_spreads_each_class_dreams_apart(digits_teacher):
    """``diversity_weight`` > 0: the dreams of a class are less alike in the teacher's eyes
    (synthesis/within_class_similarity) than without it, and the teacher recognizes about as many."""
    teacher, data = digits_teacher
    within, acc = {}, {}
    for weight in (0.0, 50.0):  # the digits CNN's features need a larger weight than CIFAR ResNets' (5-8)
        fast = _synth(teacher, data, cls=FastSynthesizer, warmup_steps=30, g_steps=5, seed=3,
                      diversity_weight=weight, diversity_memory=150)
        similarity, agreement = [], []
        for _ in range(6):
            fast.synthesize(100)
            similarity.append(fast.stats["synthesis/within_class_similarity"])
            agreement.append(fast.stats["synthesis/target_acc"])
        within[weight], acc[weight] = sum(similarity[1:]) / 5, sum(agreement[1:]) / 5
    # measured: 0.79 against 0.84, agreement 0.21 against 0.24 (a teacher of a few epochs, 30 warm-up steps)
    assert within[50.0] <= within[0.0] - 0.03, within
    assert acc[50.0] >= acc[0.0] - 0.1, acc


def test_diversity_memory_keeps_the_newest_dreams_and_travels_with_a_checkpoint(digits_teacher):
    """The memory holds the newest ``diversity_memory`` dreams' features (unit length) and target
    classes (the dreams' own class under target_mix); a checkpoint restores as much of it as the
    resumed run's settings keep; with the term off, or no memory, nothing is kept; bad values and
    a teacher without a Linear layer are refused by name."""
    teacher, data = digits_teacher
    synth = _synth(teacher, data, iterations=2, diversity_weight=1.0, diversity_memory=150, target_mix=0.5)
    batches = [synth.synthesize(100) for _ in range(3)]
    features, classes = synth.feature_memory
    assert features.shape[0] == 150 and torch.allclose(features.norm(dim=1), torch.ones(150))
    assert torch.equal(classes, torch.cat([batches[1][1], batches[2][1]])[-150:])  # the newest 150
    state = synth.state_dict()
    resumed = _synth(teacher, data, iterations=2, diversity_weight=1.0, diversity_memory=150)
    resumed.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(resumed.feature_memory, synth.feature_memory))
    shorter = _synth(teacher, data, iterations=2, diversity_weight=1.0, diversity_memory=50)
    shorter.load_state_dict(state)
    assert torch.equal(shorter.feature_memory[1], classes[-50:])
    for off in ({"diversity_weight": 0.0}, {"diversity_weight": 1.0, "diversity_memory": 0}):
        unused = _synth(teacher, data, iterations=2, **off)
        unused.load_state_dict(state)
        unused.synthesize(20)
        assert unused.feature_memory is None, off
    for setting, value in (("diversity_weight", -1), ("diversity_temperature", 0), ("diversity_memory", 1.5)):
        with pytest.raises(DfkdError, match=rf"synthesis\.synthesizer\.{setting}={value}"):
            _synth(teacher, data, **{setting: value})
    headless = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(DfkdError, match=r"diversity_weight=0"):
        _synth(headless, data, diversity_weight=1.0)


def test_input_statistics_pool_every_batch_and_grow_off_the_running_statistics():
    """A teacher's fit to real images (results.json's teacher.bn_fit): about zero for inputs drawn
    from its running statistics, however they are batched; large for inputs scaled otherwise."""
    bn = nn.BatchNorm2d(3).eval()
    bn.running_mean.copy_(torch.tensor([0.0, 1.0, -2.0]))
    bn.running_var.copy_(torch.tensor([1.0, 4.0, 0.25]))
    torch.manual_seed(0)
    x = torch.randn(4096, 3, 2, 2) * bn.running_var.sqrt().view(1, 3, 1, 1) + bn.running_mean.view(1, 3, 1, 1)
    model = nn.Sequential(bn)
    with input_statistics(model) as fit:
        for batch in x[x[:, 0, 0, 0].argsort()].split(512):  # sorted: each batch alone is far off
            model(batch)
    assert len(fit()) == 1 and fit()[0] < 0.05
    with input_statistics(model) as fit:
        model(0.5 * x)  # another normalization
    assert fit()[0] > 0.5
    assert not bn._forward_hooks  # removed on exit
