"""ResNet18 encoder (random init) and the two Con2 projection heads (METHOD section 4)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models import resnet18
from torchvision.models.resnet import BasicBlock, ResNet

FEATURE_DIM = 512
PROJECTION_DIM = 128
CIFAR_STEM_MAX_SIZE = 64


def make_encoder(in_channels: int = 3, image_size: int = 32, width: int = 64) -> nn.Module:
    """ResNet18 without its final linear layer -> [B, 8*width] features.

    At <= 64 px the CIFAR stem (3x3 conv, stride 1, no max-pool), as CSI and SupContrast.
    `width` != 64 gives a narrower ResNet18 for fast unit tests only.
    """
    net = resnet18(weights=None, num_classes=1) if width == 64 else NarrowResNet(width)
    if image_size <= CIFAR_STEM_MAX_SIZE:
        net.conv1 = nn.Conv2d(in_channels, width, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
    net.fc = nn.Identity()
    return net


class NarrowResNet(ResNet):
    """ResNet18 with base width `width` instead of 64 (module level so models pickle)."""

    def __init__(self, width: int):
        super().__init__(BasicBlock, [2, 2, 2, 2], num_classes=1)
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = self._make_layer(BasicBlock, width, 2)
        self.layer2 = self._make_layer(BasicBlock, width * 2, 2, stride=2)
        self.layer3 = self._make_layer(BasicBlock, width * 4, 2, stride=2)
        self.layer4 = self._make_layer(BasicBlock, width * 8, 2, stride=2)
        # the layers built after ResNet.__init__ get its initialisation too, as in the width-64 model
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


class ProjectionHead(nn.Sequential):
    def __init__(self, in_dim: int = FEATURE_DIM, hidden: int = FEATURE_DIM, out_dim: int = PROJECTION_DIM):
        super().__init__(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))

    def forward(self, x):
        return F.normalize(super().forward(x), dim=1)


class Con2Model(nn.Module):
    """Encoder g + context head h_phi + content head h_psi. Heads are used in training only."""

    def __init__(self, in_channels: int = 3, image_size: int = 32, width: int = 64):
        super().__init__()
        self.in_channels = in_channels
        self.image_size = image_size
        self.width = width
        self.encoder = make_encoder(in_channels, image_size, width)
        feat = 8 * width
        self.feature_dim = feat
        self.context_head = ProjectionHead(feat, feat)
        self.content_head = ProjectionHead(feat, feat)

    def architecture(self) -> dict:
        return {"in_channels": self.in_channels, "image_size": self.image_size, "width": self.width}

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return self.context_head(h), self.content_head(h)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Representations g(x) used by the scorers (not the heads)."""
        return self.encoder(x)
