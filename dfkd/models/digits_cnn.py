"""A small CNN with BatchNorm for 8x8 images: the teacher of the embedded default."""

from __future__ import annotations

from torch import nn


def _block(c_in: int, c_out: int, batch_norm: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(nn.ReLU(inplace=True))
    return layers


class DigitsCNN(nn.Module):
    """conv-BN-ReLU x3 with two 2x2 max-pools, global average pool, linear head."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 32,
                 batch_norm: bool = True) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            *_block(in_channels, w, batch_norm),
            *_block(w, 2 * w, batch_norm),
            nn.MaxPool2d(2),
            *_block(2 * w, 4 * w, batch_norm),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(4 * w, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x))
