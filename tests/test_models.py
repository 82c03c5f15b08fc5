import pytest
import torch

from dfkd.errors import DfkdError
from dfkd.models import ARCHITECTURES, create, custom, has_batchnorm

SMALL = {"digits_cnn": {"width": 4, "in_channels": 1}, "mobilenetv2": {"width_mult": 0.25}}


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_every_architecture_builds_classifies_and_has_batchnorm(name):
    kwargs = SMALL.get(name, {"width": 4})
    model = create(name, num_classes=7, **kwargs).eval()
    size = 8 if name == "digits_cnn" else 32
    out = model(torch.randn(2, kwargs.get("in_channels", 3), size, size))
    assert out.shape == (2, 7)
    assert has_batchnorm(model)


def test_standard_cifar_sizes():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    # the usual CIFAR-10 parameter counts of these architectures
    assert count(create("resnet18")) == 11_173_962
    assert count(create("resnet50")) == 23_520_842
    assert count(create("mobilenetv2")) == 2_236_682
    assert count(create("vgg16")) == 14_724_042


def test_unknown_architecture_names_the_setting():
    with pytest.raises(DfkdError, match=r"model\.name='resnet9000'.*resnet18"):
        create("resnet9000")


def test_custom_model_by_import_path():
    model = custom("dfkd.models.cifar.VGG16BN", kwargs={"num_classes": 4, "width": 4})
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 4)
    with pytest.raises(DfkdError, match=r"model\.path='nowhere\.Net' cannot be imported"):
        custom("nowhere.Net")
    with pytest.raises(DfkdError, match=r"model\.kwargs"):
        custom("dfkd.models.cifar.VGG16BN", kwargs={"colour": "blue"})
