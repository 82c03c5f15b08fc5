"""The architecture registry: ``model.name`` -> constructor. conf/model/*.yaml name one of these;
``model=custom`` builds any nn.Module from its import path."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from torch import nn

from dfkd.errors import DfkdError, check
from dfkd.models import cifar
from dfkd.models.digits_cnn import DigitsCNN

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "digits_cnn": DigitsCNN,
    "resnet18": cifar.resnet18,
    "resnet34": cifar.resnet34,
    "resnet50": cifar.resnet50,
    "mobilenetv2": cifar.mobilenetv2,
    "vgg16": cifar.vgg16,
}


def create(name: str, **kwargs) -> nn.Module:
    """Build ``name`` from the registry with its constructor arguments."""
    check(name in ARCHITECTURES, f"model.name={name!r} is not a known architecture; choose one of "
          f"{sorted(ARCHITECTURES)}, or model=custom with model.path=package.module.Class.")
    try:
        return ARCHITECTURES[name](**kwargs)
    except TypeError as err:
        raise DfkdError(f"model.name={name} does not take these settings ({err}); check model.*.") from err


def custom(path: str, kwargs: dict | None = None, name: str = "custom") -> nn.Module:
    """Any nn.Module: ``path`` is 'package.module.ClassOrFactory', ``kwargs`` its arguments."""
    module_name, _, attr = str(path).rpartition(".")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as err:
        raise DfkdError(f"model.path={path!r} cannot be imported ({err}). Give the full import path "
                        f"of an nn.Module class or factory, e.g. model.path=mypackage.nets.MyNet, "
                        f"with its package on PYTHONPATH.") from err
    kwargs = dict(kwargs or {})
    try:
        return factory(**kwargs)
    except TypeError as err:
        raise DfkdError(f"model.path={path} could not be built with model.kwargs={kwargs} ({err}).") from err
