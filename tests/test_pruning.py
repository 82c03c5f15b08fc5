import pytest
import torch

from dfkd import pruning
from dfkd.errors import DfkdError
from dfkd.models import DigitsCNN
from dfkd.modules import DistillModule
from dfkd.pruning.nm import as_groups


def _model():
    torch.manual_seed(0)
    return DigitsCNN(width=8)


@pytest.mark.parametrize("method", ["l1", "random"])
@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.9])
def test_global_pruning_reaches_the_asked_ratio(method, ratio):
    model = pruning.prune(_model(), ratio, method=method, scope="global")
    report = pruning.sparsity(model)
    assert report["overall"] == pytest.approx(ratio, abs=1.0 / report["weights"])
    assert set(report["layers"]) == {"features.0", "features.3", "features.7", "classifier"}


def test_global_l1_removes_the_smallest_weights():
    reference = _model()
    model = pruning.prune(_model(), 0.7, scope="global")
    kept = torch.cat([m.weight.flatten() for _, m in pruning.prunable(model)])
    original = torch.cat([m.weight.detach().flatten() for _, m in pruning.prunable(reference)])
    threshold = original.abs().kthvalue(int(0.7 * original.numel())).values
    assert torch.all(kept[original.abs() < threshold] == 0)
    assert torch.all(kept[original.abs() > threshold] != 0)


def test_a_channels_last_teacher_prunes_like_a_contiguous_one():
    """A teacher trained on a GPU (trainer=gpu) has channels_last weights."""
    model = pruning.prune(_model().to(memory_format=torch.channels_last), 0.7)
    reference = pruning.prune(_model(), 0.7)
    for (_, m), (_, r) in zip(pruning.prunable(model), pruning.prunable(reference)):
        assert torch.equal(m.weight_mask, r.weight_mask)


def test_layer_scope_prunes_every_layer_to_the_ratio():
    report = pruning.sparsity(pruning.prune(_model(), 0.8, scope="layer"))
    for name, fraction in report["layers"].items():
        assert fraction == pytest.approx(0.8, abs=0.01), name


def test_lamp_scores_follow_the_paper_on_a_small_layer():
    """Lee et al.'s definition, by hand: sorted by |w|, each w^2 over the sum of w^2 from it up."""
    weight = torch.tensor([[3.0, -1.0], [0.5, 2.0]])
    # squares 9, 1, 0.25, 4 -> ascending 0.25, 1, 4, 9 with tails 14.25, 14, 13, 9
    expected = torch.tensor([[9 / 9, 1 / 14], [0.25 / 14.25, 4 / 13]])
    assert torch.allclose(pruning.lamp_scores(weight), expected)


def test_lamp_reaches_the_ratio_ranks_like_l1_within_a_layer_and_keeps_every_layer():
    model = _model()
    with torch.no_grad():
        model.features[3].weight.mul_(1e-4)  # tiny weights: a global |w| threshold empties this layer
    reference = [m.weight.detach().clone() for _, m in pruning.prunable(model)]
    report = pruning.sparsity(pruning.prune(model, 0.9, scope="lamp"))
    assert report["overall"] == pytest.approx(0.9, abs=1.0 / report["weights"])
    kept_scores, pruned_scores = [], []
    for (name, m), original in zip(pruning.prunable(model), reference):
        kept = m.weight != 0
        assert kept.any(), name  # the largest weight of each layer scores 1: never emptied
        # within a layer LAMP ranks as |w| does: every kept weight is larger than every pruned one
        assert original[kept].abs().min() >= original[~kept].abs().max(), name
        scores = pruning.lamp_scores(original)
        kept_scores.append(scores[kept])
        pruned_scores.append(scores[~kept])
    # one threshold on the scores across the network, not a ratio per layer
    assert torch.cat(kept_scores).min() >= torch.cat(pruned_scores).max()
    assert max(report["layers"].values()) - min(report["layers"].values()) > 0.1


def test_tables_tell_the_scopes_apart():
    """Runs that differ only in pruning.scope must not be averaged into one row of a report."""
    names = {scope: pruning.Unstructured(0.9, scope=scope).settings()["pruning_method"]
             for scope in ("global", "layer", "lamp")}
    assert names == {"global": "l1", "layer": "l1 layer", "lamp": "l1 lamp"}


def test_lamp_with_random_pruning_is_refused():
    with pytest.raises(DfkdError, match=r"pruning\.scope=lamp.*pruning\.method=l1"):
        pruning.prune(_model(), 0.5, method="random", scope="lamp")


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_ratio_outside_zero_one_is_refused(ratio):
    with pytest.raises(DfkdError, match=r"pruning\.ratio"):
        pruning.prune(_model(), ratio)


def test_unknown_method_is_refused():
    with pytest.raises(DfkdError, match=r"pruning\.method"):
        pruning.prune(_model(), 0.5, method="magic")


def _distil(teacher, student, steps=5):
    """What recovery does to a student: a few large KD steps."""
    module = DistillModule(teacher, student, 10, lambda p: torch.optim.SGD(p, lr=0.5, momentum=0.9),
                           temperature=4.0)
    optimizer = module.optimizer_factory(student.parameters())
    for _ in range(steps):
        loss = module.training_step((torch.randn(16, 1, 8, 8), torch.zeros(16)), 0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_zeros_survive_recovery_steps_and_saving():
    teacher = _model().eval()
    student = pruning.prune(_model().train(), 0.9)
    zero_before = {n: (m.weight == 0).clone() for n, m in pruning.prunable(student)}
    _distil(teacher, student)
    for name, m in pruning.prunable(student):
        assert torch.all(m.weight[zero_before[name]] == 0), name
    assert pruning.Unstructured(0.9).check_kept(student) >= 0.9

    state = pruning.make_permanent(student).state_dict()
    assert not any(k.endswith(("_orig", "_mask")) for k in state)
    plain = DigitsCNN(width=8)
    plain.load_state_dict(state)  # a plain state dict of the unpruned architecture
    assert pruning.sparsity(plain)["overall"] == pytest.approx(0.9, abs=1e-3)


def test_lost_sparsity_fails_loudly():
    model = pruning.make_permanent(pruning.prune(_model(), 0.9))
    with torch.no_grad():
        for _, m in pruning.prunable(model):
            m.weight.add_(1.0)  # what a recovery that ignores masks would do
    with pytest.raises(DfkdError, match="undid the pruning"):
        pruning.Unstructured(0.9).check_kept(model)


# -- layers left dense, whole layers removed -------------------------------------------------

def test_layers_left_dense_stay_dense_and_the_rest_reaches_the_ratio():
    model = pruning.prune(_model(), 0.8, keep_dense=["first", "last"])
    layers = pruning.sparsity(model)["layers"]
    assert layers["features.0"] == 0 and layers["classifier"] == 0
    pruner = pruning.Unstructured(0.8, keep_dense=["first", "last"])
    assert pruner.check_kept(pruning.make_permanent(model)) == pytest.approx(0.8, abs=1e-3)


def test_an_unknown_dense_layer_is_refused_with_the_valid_names():
    with pytest.raises(DfkdError, match=r"pruning\.keep_dense names 'fc'.*features\.0, features\.3"):
        pruning.prune(_model(), 0.5, keep_dense=["fc"])


def test_a_global_ratio_that_removes_a_whole_layer_is_refused():
    model = _model()
    with torch.no_grad():
        model.features[3].weight.mul_(1e-4)  # a layer of tiny weights: global L1 takes all of them
    with pytest.raises(DfkdError, match=r"removes every weight of layer features\.3.*pruning\.scope=layer"):
        pruning.prune(model, 0.6, scope="global")
    assert pruning.sparsity(pruning.prune(_model(), 0.6, scope="layer"))["overall"] == pytest.approx(0.6, abs=1e-2)


# -- N:M ---------------------------------------------------------------------------------------

def _groups_of_four(weight):
    return (as_groups(weight.detach(), 4) != 0).sum(1)


def test_nm_keeps_at_most_n_of_every_m_input_channels_and_the_largest_ones():
    reference, model = _model(), pruning.NM(2, 4)(_model())
    for (name, m), (_, r) in zip(pruning.prunable(model), pruning.prunable(reference)):
        if name == "features.0":  # 'first' is left dense: one input channel
            assert bool((m.weight != 0).all())
            continue
        assert int(_groups_of_four(m.weight).max()) <= 2, name
        kept, full = (as_groups(w.weight.detach().abs(), 4) for w in (m, r))
        assert torch.equal(kept.sort(1).values[:, 2:], full.sort(1).values[:, 2:]), name  # the two largest
    assert pruning.NM(2, 4).check_kept(model) == pytest.approx(0.5)


def test_nm_that_does_not_divide_a_layer_is_refused_naming_the_setting():
    with pytest.raises(DfkdError, match=r"pruning\.m=4.*features\.0 \(1 inputs\).*pruning\.keep_dense"):
        pruning.NM(2, 4, keep_dense=[])(_model())
    with pytest.raises(DfkdError, match=r"pruning\.n=4 and pruning\.m=4"):
        pruning.NM(4, 4)


def test_nm_leaves_depthwise_convolutions_dense():
    from dfkd.models.cifar import mobilenetv2

    model = pruning.NM(2, 4)(mobilenetv2(width_mult=0.25))
    depthwise = [m for _, m in pruning.prunable(model) if getattr(m, "groups", 1) > 1]
    assert depthwise and all(bool((m.weight != 0).all()) for m in depthwise)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_the_nm_pattern_and_the_channels_survive_recovery_steps():
    teacher = _model().eval()
    for pruner in (pruning.NM(2, 4), pruning.Structured(0.5)):
        student = pruner(_model().train(), torch.zeros(1, 1, 8, 8))
        _distil(teacher, student)
        pruner.check_kept(pruning.make_permanent(student))  # raises if the pattern was lost


def test_a_lost_nm_pattern_fails_loudly():
    model = pruning.make_permanent(pruning.NM(2, 4)(_model()))
    with torch.no_grad():
        model.features[3].weight.add_(1.0)
    with pytest.raises(DfkdError, match=r"undid the pruning: layer features\.3"):
        pruning.NM(2, 4).check_kept(model)


# -- structured ----------------------------------------------------------------------------------

def _flops(model, shape):
    from dfkd.pruning.structured import count

    return count(model.eval(), torch.zeros(1, *shape), "flops")


@pytest.mark.parametrize("arch", ["digits_cnn", "resnet18", "resnet50", "mobilenetv2", "vgg16"])
def test_structured_pruning_makes_a_smaller_network_that_runs(arch):
    from dfkd.models import cifar

    torch.manual_seed(0)
    shape = (1, 8, 8) if arch == "digits_cnn" else (3, 32, 32)
    model = {"digits_cnn": lambda: DigitsCNN(width=8), "resnet18": lambda: cifar.resnet18(width=8),
             "resnet50": lambda: cifar.resnet50(width=8), "mobilenetv2": lambda: cifar.mobilenetv2(width_mult=0.25),
             "vgg16": lambda: cifar.vgg16(width=8)}[arch]()
    before = _flops(model, shape)
    widths = [m.weight.shape[0] for _, m in pruning.prunable(model)]
    pruner = pruning.Structured(0.5)
    model = pruner(model.train(), torch.zeros(1, *shape))
    assert model.training  # its mode is given back
    assert _flops(model, shape) <= 0.5 * before * 1.001
    assert pruner.found["removed"] >= 0.5 - 1e-3
    after = [m.weight.shape[0] for _, m in pruning.prunable(model)]
    assert sum(after) < sum(widths) and after[-1] == widths[-1] == 10  # the classes stay
    assert model.eval()(torch.randn(3, *shape)).shape == (3, 10)


class HeadFirst(torch.nn.Module):
    """A model that lists its classifier before the layers that run before it."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(16, 5)
        self.body = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.BatchNorm2d(16),
                                        torch.nn.ReLU(), torch.nn.Conv2d(16, 16, 3, padding=1),
                                        torch.nn.BatchNorm2d(16), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                        torch.nn.Flatten())

    def forward(self, x):
        return self.head(self.body(x))


def test_structured_pruning_keeps_the_classes_of_a_model_that_lists_its_classifier_first():
    """The classifier is the layer that runs last, wherever the model lists it: its outputs (the
    classes) stay, with no pruning.keep_dense needed."""
    torch.manual_seed(0)
    model = pruning.Structured(0.5)(HeadFirst(), torch.zeros(1, 1, 8, 8))
    assert model.body[0].out_channels < 16 and model.head.in_features < 16  # pruned, ...
    assert model.eval()(torch.randn(2, 1, 8, 8)).shape == (2, 5)  # ... but not the classes


@pytest.mark.parametrize("method", ["magnitude", "nm", "structured"])
def test_keep_dense_first_and_last_are_the_layers_that_run_first_and_last(method):
    """'first' and 'last' follow the forward pass, not the order the model lists its layers: on a
    model that lists its classifier first, 'first' is the first conv and 'last' the classifier."""
    torch.manual_seed(0)
    model, example = HeadFirst(), torch.zeros(1, 1, 8, 8)
    first = model.body[0].weight.detach().clone()
    pruner = {"magnitude": pruning.Unstructured(0.5, keep_dense=["first"]),
              "nm": pruning.NM(2, 4, keep_dense=["first"]),  # the first conv's single input cannot take 2:4
              "structured": pruning.Structured(0.5, keep_dense=["first"])}[method]
    pruner.validate(model, example)
    model = pruner(model, example)
    if method == "structured":
        assert model.body[0].out_channels == 16 and model.body[3].out_channels < 16
    else:
        assert torch.equal(pruning.make_permanent(model).body[0].weight, first)  # left dense
        assert (model.head.weight == 0).any() and (model.body[3].weight == 0).any()
    assert pruning.dense_names(HeadFirst(), ["last"], pruning.run_order(HeadFirst(), example)) == {"head"}


def test_structured_pruning_by_parameters_and_global_bn_scale():
    pruner, model = pruning.Structured(0.6, target="params", importance="bn_scale", scope="global"), _model()
    pruner.validate(model, torch.zeros(1, 1, 8, 8))  # an untrained network's equal BN scales are no obstacle
    for m in model.modules():  # a trained network's BatchNorm scales differ
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(m.weight, 0.1, 2.0)
    model = pruner(model, torch.zeros(1, 1, 8, 8))
    assert sum(p.numel() for p in model.parameters()) <= 0.4 * sum(p.numel() for p in _model().parameters()) * 1.001


def test_global_structured_pruning_with_lamp_normalizer_reaches_the_flops_and_ranks_otherwise():
    from dfkd.models import cifar

    def pruned(normalizer):
        torch.manual_seed(0)
        model = cifar.resnet18(width=8)
        before = _flops(model, (3, 32, 32))
        pruner = pruning.Structured(0.5, scope="global", normalizer=normalizer)
        model = pruner(model, torch.zeros(1, 3, 32, 32))
        assert _flops(model, (3, 32, 32)) <= 0.5 * before * 1.001
        return pruner.found["channels"], pruner.settings()["pruning_method"]

    (mean, mean_name), (lamp, lamp_name) = pruned("mean"), pruned("lamp")
    assert mean != lamp  # the normalizer decides which layers give up channels
    assert (mean_name, lamp_name) == ("structured l1 global", "structured l1 global lamp")
    assert pruning.Structured(0.5).settings()["pruning_method"] == "structured l1"
    with pytest.raises(DfkdError, match=r"pruning\.normalizer"):
        pruning.Structured(0.5, scope="global", normalizer="median")
    with pytest.raises(DfkdError, match=r"pruning\.normalizer=lamp.*pruning\.scope=global"):
        pruning.Structured(0.5, normalizer="lamp")  # uniform pruning would ignore it silently


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "mobilenetv2"])
def test_structured_pruning_can_keep_the_residual_streams_whole(arch):
    from dfkd.models import cifar

    make = {"resnet18": lambda: cifar.resnet18(width=8), "resnet50": lambda: cifar.resnet50(width=8),
            "mobilenetv2": lambda: cifar.mobilenetv2(width_mult=0.25)}[arch]
    widths = {n: m.weight.shape[0] for n, m in pruning.prunable(make())}
    before = _flops(make(), (3, 32, 32))
    pruner = pruning.Structured(0.5, coupled="keep")
    model = pruner(make(), torch.zeros(1, 3, 32, 32))
    assert _flops(model, (3, 32, 32)) <= 0.5 * before * 1.001
    after = pruner.found["channels"]
    # the layers that write into a residual addition keep every channel; the others give them up
    last = {"resnet18": "conv2", "resnet50": "conv3"}.get(arch)
    if last:
        streams = [n for n in widths if n.endswith((last, "downsample.0"))]
        streams += ["stem.0"] if arch == "resnet18" else []  # ResNet-50's first stage widens its input
        inner = [n for n in widths if n.endswith("conv1")]
    else:  # MobileNetV2 at this width: blocks 1-16 add their input to their output
        streams = [n for n in widths if n.endswith("conv.2") or n in ("features.0.0", "features.1.conv.1")]
        streams.remove("features.17.conv.2")  # 320 channels out of 160 in: no addition
        # (features.1.conv.0.0 is depthwise, on the stem's stream)
        inner = [n for n in widths if n.endswith("conv.0.0") and n != "features.1.conv.0.0"]
    assert streams and all(after[n] == widths[n] for n in streams)
    assert inner and all(after[n] < widths[n] for n in inner)
    assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert pruner.settings()["pruning_method"] == "structured l1 coupled kept"
    assert "residual streams whole" in pruner.describe()
    with pytest.raises(DfkdError, match=r"pruning\.coupled"):
        pruning.Structured(0.5, coupled="stem")


def test_keeping_coupled_channels_says_so_where_nothing_is_coupled(caplog):
    from dfkd.models import cifar

    plain = pruning.Structured(0.5)(cifar.vgg16(width=8), torch.zeros(1, 3, 32, 32))
    pruner = pruning.Structured(0.5, coupled="keep")
    with caplog.at_level("WARNING"):
        pruner.validate(cifar.vgg16(width=8), torch.zeros(1, 3, 32, 32))
        kept = pruner(cifar.vgg16(width=8), torch.zeros(1, 3, 32, 32))
    assert "pruning.coupled=keep" in caplog.text and "no residual" in caplog.text
    assert caplog.text.count("no residual") == 1  # said once, when the settings are checked
    assert "residual streams whole" not in pruner.describe()
    assert [m.weight.shape for _, m in pruning.prunable(kept)] == [m.weight.shape for _, m in pruning.prunable(plain)]


def _dreams(model, n=32, shape=(1, 8, 8)):
    """Stand-ins for dreams: noise, labelled by the model."""
    images = torch.randn(n, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return images, model.eval()(images).argmax(1)


def test_taylor_importance_removes_a_channel_the_output_does_not_need_whatever_its_weights():
    def model():
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                  torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                  torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10))
        with torch.no_grad():  # channel 0 of the first conv: the largest weights, read by nothing
            net[0].weight[0] *= 100
            net[3].weight[:, 0] = 0
        return net.eval()

    def kept_large_channel(importance):
        net = model()
        pruner = pruning.Structured(0.3, importance=importance, dreams=32)
        net = pruner(net, torch.zeros(1, 1, 8, 8), dreams=_dreams(model()))
        assert net[0].out_channels < 8 and all(p.grad is None for p in net.parameters())
        return bool(net[0].weight.abs().amax() > 10)

    assert kept_large_channel("l1")  # weight norms keep it
    assert not kept_large_channel("taylor")  # the loss on the dreams does not change without it


def test_taylor_scores_square_the_estimate_of_each_minibatch_of_64():
    """Molchanov et al.: per minibatch, the BatchNorm gate's first-order term; summed squares over
    minibatches (the square of the total would be near zero on a trained network)."""
    from dfkd.pruning.taylor import TaylorImportance

    model = _model().eval()
    images, classes = _dreams(_model(), n=128)
    importance = TaylorImportance()
    importance.accumulate(model, images, classes)
    assert all(p.grad is None for p in model.parameters())  # nothing left for an optimizer to apply
    bn, expected = model.features[1], 0
    for x, y in zip(images.split(64), classes.split(64)):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        expected = expected + (bn.weight * bn.weight.grad + bn.bias * bn.bias.grad).detach() ** 2
    assert torch.allclose(importance.scores[bn], expected, rtol=1e-4, atol=1e-12)


def test_taylor_ranks_channels_that_split_into_several_batchnorms():
    """A root conv whose channels two BatchNorm layers hold (chunk, then concatenate): each channel
    scored by the BatchNorm layer that holds it."""

    class Split(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
            self.bn1, self.bn2 = torch.nn.BatchNorm2d(4), torch.nn.BatchNorm2d(4)
            self.head = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, padding=1),
                                            torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                            torch.nn.Flatten(), torch.nn.Linear(8, 10))

        def forward(self, x):
            a, b = self.conv(x).chunk(2, dim=1)
            return self.head(torch.cat([self.bn1(a), self.bn2(b)], dim=1))

    import torch_pruning as tp

    from dfkd.pruning.taylor import TaylorImportance

    torch.manual_seed(0)
    model = Split().eval()
    importance = TaylorImportance()
    importance.accumulate(model, *_dreams(model))
    graph = tp.DependencyGraph().build_dependency(model, torch.zeros(1, 1, 8, 8))
    group = graph.get_pruning_group(model.conv, tp.prune_conv_out_channels, idxs=list(range(8)))
    both = torch.cat([importance.scores[model.bn1], importance.scores[model.bn2]])
    # every root channel scored by a BatchNorm layer's gate (which half goes where is torch-pruning's mapping)
    assert torch.allclose(importance(group).sort().values, (both / both.mean()).sort().values)
    # torch-pruning loses track of a split's channels after its first step, whatever the ranking:
    # a message that names what to use instead, not an IndexError from inside it
    for name in ("l1", "taylor"):
        pruner = pruning.Structured(0.4, importance=name, dreams=32)
        with pytest.raises(DfkdError, match=r"pruning=magnitude"):
            pruner(Split(), torch.zeros(1, 1, 8, 8), dreams=_dreams(Split().eval()) if pruner.dreams else None)


def test_taylor_importance_needs_dreams_and_a_sensible_count():
    pruner = pruning.Structured(0.5, importance="taylor", dreams=64)
    assert pruner.dreams == 64 and pruning.Structured(0.5, dreams=64).dreams == 0  # only taylor asks for dreams
    assert pruning.Structured(0.5, dreams=0).dreams == 0  # and only taylor checks their number
    assert pruner.settings()["pruning_dreams"] == 64 and "pruning_dreams" not in pruning.Structured(0.5).settings()
    pruner.validate(_model(), torch.zeros(1, 1, 8, 8))  # noise stands in for dreams on the untrained network
    with pytest.raises(DfkdError, match="none were given"):
        pruner(_model(), torch.zeros(1, 1, 8, 8))
    for bad in (0, 2.5, True):
        with pytest.raises(DfkdError, match=r"pruning\.dreams"):
            pruning.Structured(0.5, importance="taylor", dreams=bad)
    model = pruner(_model(), torch.zeros(1, 1, 8, 8), dreams=_dreams(_model()))
    assert pruner.found["removed"] >= 0.5 - 1e-3 and model.eval()(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_structured_pruning_prunes_a_frozen_model_and_keeps_it_frozen():
    frozen, partly = _model().requires_grad_(False), _model()
    partly.classifier.requires_grad_(False)
    for net, importance in ((frozen, "l1"), (partly, "l1"), (_model().requires_grad_(False), "taylor")):
        before = {n: p.requires_grad for n, p in net.named_parameters()}
        pruner = pruning.Structured(0.5, importance=importance, dreams=32)
        pruner(net.train(), torch.zeros(1, 1, 8, 8), dreams=_dreams(_model()) if pruner.dreams else None)
        assert pruner.found["removed"] >= 0.5 - 1e-3 and net.training
        assert {n: p.requires_grad for n, p in net.named_parameters()} == before
    # and when pruning fails, the model is given back as it came
    net = _model().requires_grad_(False).train()
    with pytest.raises(DfkdError, match=r"cannot remove"):
        pruning.Structured(0.995, target="params")(net, torch.zeros(1, 1, 8, 8))
    assert net.training and not any(p.requires_grad for p in net.parameters())


@pytest.mark.parametrize("importance", ["l1", "taylor"])
def test_structured_pruning_leaves_batchnorm_statistics_alone(importance):
    model = _model()
    bn = model.features[1]
    seen, mean = int(bn.num_batches_tracked), bn.running_mean.clone()
    pruner = pruning.Structured(0.3, importance=importance, dreams=32)
    pruner(model.train(), torch.zeros(1, 1, 8, 8), dreams=_dreams(_model()) if pruner.dreams else None)
    assert int(bn.num_batches_tracked) == seen  # tracing (and the taylor scores) ran in eval mode
    assert model.training and bn.running_mean.shape[0] < mean.shape[0]


def test_structured_rounds_reach_the_ratio_of_the_whole_network():
    torch.manual_seed(0)
    example, model = torch.zeros(1, 1, 8, 8), DigitsCNN(width=32)  # wide enough for fine steps
    before = _flops(model, (1, 8, 8))
    pruner = pruning.Structured(0.5, rounds=2, schedule="linear")
    assert pruner.rounds() == pytest.approx([0.25, 0.5])
    assert pruner.settings()["pruning_method"] == "structured l1 2xlinear"
    model = pruner(model, example, ratio=0.25)
    assert 0.65 * before <= _flops(model, (1, 8, 8)) <= 0.75 * before * 1.001
    model = pruner(model, example, ratio=0.5)  # the second round gets the first round's network
    assert 0.45 * before <= _flops(model, (1, 8, 8)) <= 0.5 * before * 1.001  # not half of what was left
    assert pruner.found["before"] == before and 0.5 - 1e-3 <= pruner.found["removed"] <= 0.55
    assert pruner.describe().startswith(f"{pruner.found['removed']:.1%} of the flops removed")
    assert pruner.settings()["pruning_rounds"] == pytest.approx([0.25, 0.5])
    other = DigitsCNN(width=16)  # no ratio given: one shot from the whole of another network
    pruner(other, example)
    assert pruner.found["before"] == _flops(DigitsCNN(width=16), (1, 8, 8))
    assert 0.5 - 1e-3 <= pruner.found["removed"] <= 0.55
    with pytest.raises(DfkdError, match=r"round 2 of 2 before round 1"):
        pruning.Structured(0.5, rounds=2, schedule="linear")(DigitsCNN(width=32), example, ratio=0.5)
    with pytest.raises(DfkdError, match=r"pruning\.rounds=0"):
        pruning.Structured(0.5, rounds=0)


def test_a_structured_ratio_that_would_remove_whole_layers_is_refused():
    with pytest.raises(DfkdError, match=r"cannot remove 99.5% of the params \(pruning\.ratio=0\.995\).*Lower pruning\.ratio"):
        pruning.Structured(0.995, target="params").validate(_model(), torch.zeros(1, 1, 8, 8))


# -- iterative -----------------------------------------------------------------------------------

def test_iterative_schedules_end_at_the_ratio():
    cubic = pruning.Iterative(0.9, rounds=3).rounds()
    assert cubic == pytest.approx([0.9 * (1 - (2 / 3) ** 3), 0.9 * (1 - (1 / 3) ** 3), 0.9])
    assert pruning.Iterative(0.9, rounds=3, schedule="linear").rounds() == pytest.approx([0.3, 0.6, 0.9])
    with pytest.raises(DfkdError, match=r"pruning=iterative needs pruning\.method=l1"):
        pruning.Iterative(0.9, method="random")


def test_iterative_rounds_keep_earlier_zeros():
    pruner, model = pruning.Iterative(0.9, rounds=2), _model()
    first = pruner(model, ratio=0.5)
    zeros = {n: (m.weight == 0).clone() for n, m in pruning.prunable(first)}
    with torch.no_grad():  # what a round of recovery does to the surviving weights
        for _, m in pruning.prunable(first):
            m.weight_orig.mul_(1.5)
    second = pruner(first, ratio=0.9)
    for name, m in pruning.prunable(second):
        assert bool((m.weight[zeros[name]] == 0).all()), name
    assert pruner.check_kept(pruning.make_permanent(second)) == pytest.approx(0.9, abs=1e-3)
