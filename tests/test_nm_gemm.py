"""experiments/nm_gpu_speed.py times each 2:4 convolution as one matrix product (im2col, then
PyTorch's semi-structured sparse product): its GPU figures mean something only if that product is
the convolution, and only if its weight rows keep dfkd's 2:4 pattern along K."""

import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

from dfkd.pruning import NM, make_permanent


def _speed_script():
    path = Path(__file__).resolve().parents[1] / "experiments" / "nm_gpu_speed.py"
    spec = importlib.util.spec_from_file_location("nm_gpu_speed", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("kernel,stride,padding", [(3, 1, 1), (3, 2, 1), (1, 1, 0), (1, 2, 0)])
def test_the_gemm_path_is_the_convolution_and_keeps_two_of_four_along_k(kernel, stride, padding):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1),
                        nn.Conv2d(8, 16, kernel, stride=stride, padding=padding, bias=False))
    NM()(net)  # the first conv stays dense, the second is 2:4
    make_permanent(net)
    conv = net[1]
    gemm = _speed_script().GemmConv(conv, sparse=False)
    x = torch.randn(2, 8, 9, 9)
    with torch.no_grad():
        assert torch.allclose(gemm(x), conv(x), atol=1e-5)
    assert int((gemm.weight.reshape(-1, 4) != 0).sum(1).max()) == 2  # every group of 4 along K: 2 kept
