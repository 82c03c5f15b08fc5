"""CIFAR variants (32x32 input: 3x3 stem, no max-pool) of ResNet-18/34/50, MobileNetV2 and
VGG16-BN. ``width`` scales every layer's channels (64 is the standard ResNet/VGG width; smaller
values give the CPU-sized variants used for tests and CPU-reduced benchmarks)."""

from __future__ import annotations

from torch import nn
from torchvision.models import MobileNetV2
from torchvision.models.resnet import BasicBlock, Bottleneck


class CifarResNet(nn.Module):
    """He et al.'s ResNet with torchvision's blocks and a CIFAR stem."""

    def __init__(self, block: type[BasicBlock | Bottleneck], layers: list[int], num_classes: int = 10,
                 in_channels: int = 3, width: int = 64) -> None:
        super().__init__()
        self.inplanes = width
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        self.layers = nn.Sequential(*[self._stage(block, width * 2 ** i, n, stride=1 if i == 0 else 2)
                                      for i, n in enumerate(layers)])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(width * 8 * block.expansion, num_classes)

    def _stage(self, block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                                       nn.BatchNorm2d(planes * block.expansion))
        stage = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        stage += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def forward(self, x):
        return self.fc(self.pool(self.layers(self.stem(x))))


def resnet18(num_classes: int = 10, in_channels: int = 3, width: int = 64) -> CifarResNet:
    return CifarResNet(BasicBlock, [2, 2, 2, 2], num_classes, in_channels, width)


def resnet34(num_classes: int = 10, in_channels: int = 3, width: int = 64) -> CifarResNet:
    return CifarResNet(BasicBlock, [3, 4, 6, 3], num_classes, in_channels, width)


def resnet50(num_classes: int = 10, in_channels: int = 3, width: int = 64) -> CifarResNet:
    return CifarResNet(Bottleneck, [3, 4, 6, 3], num_classes, in_channels, width)


def mobilenetv2(num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0) -> MobileNetV2:
    """torchvision's MobileNetV2 with CIFAR strides (stride-1 stem, first down-sampling later)."""
    setting = [[1, 16, 1, 1], [6, 24, 2, 1], [6, 32, 3, 2], [6, 64, 4, 2],
               [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]
    model = MobileNetV2(num_classes=num_classes, width_mult=width_mult,
                        inverted_residual_setting=setting, dropout=0.0)
    stem = model.features[0][0]
    model.features[0][0] = nn.Conv2d(in_channels, stem.out_channels, 3, stride=1, padding=1, bias=False)
    return model


_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG16BN(nn.Module):
    """VGG16 with BatchNorm and a single linear classifier (the usual CIFAR variant)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 64) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for v in _VGG16:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            out = v * width // 64
            layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out),
                       nn.ReLU(inplace=True)]
            channels = out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x))


def vgg16(num_classes: int = 10, in_channels: int = 3, width: int = 64) -> VGG16BN:
    return VGG16BN(num_classes, in_channels, width)
