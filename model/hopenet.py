"""Hopenet (Ruiz et al., "Fine-Grained Head Pose Estimation Without Keypoints"), pure torch.

The paper (§3.4) labels head pose with Hopenet. This is the network of
natanielruiz/deep-head-pose ``hopenet.Hopenet(Bottleneck, [3, 4, 6, 3], 66)``: a ResNet-50
trunk and three 66-way bin classifiers (3° bins over [-99°, 99°)), rewritten without
torchvision but with the SAME parameter names (``conv1``, ``bn1``, ``layer1..4`` with
``downsample.0/1``, ``fc_yaw``, ``fc_pitch``, ``fc_roll`` and the vestigial
``fc_finetune``), so the published ``hopenet_robust_alpha1.pkl`` state dict loads as is.

Angles come out in Hopenet's native convention, which is the project's
(`denseface.geometry.pose`): yaw > 0 = face turned towards the image's left,
pitch > 0 = looking up, roll > 0 = clockwise in the image. No sign is flipped.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from denseface.model.state_files import load_strict, read_state_dict

NUM_BINS = 66
BIN_WIDTH = 3.0
BIN_OFFSET = 99.0  # degrees = expected bin index * 3 - 99
INPUT_SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHTS_HELP = (
    "Hopenet weights are not bundled: download hopenet_robust_alpha1.pkl (300W-LP, alpha=1) "
    "from the links in https://github.com/natanielruiz/deep-head-pose (README, 'Pretrained "
    "models') and point the head_pose stage's weights path at it, or use the offline "
    "'pnp' backend."
)


class Bottleneck(nn.Module):
    """torchvision's ResNet bottleneck (stride on the 3x3 conv), same attribute names."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class Hopenet(nn.Module):
    """ResNet trunk + yaw/pitch/roll bin logits; ``forward`` returns the three (B, 66) logits."""

    def __init__(self, layers: tuple[int, ...] = (3, 4, 6, 3), num_bins: int = NUM_BINS) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=2)
        self.avgpool = nn.AvgPool2d(7)  # as in deep-head-pose: the input must be 224 x 224
        features = 512 * Bottleneck.expansion
        self.fc_yaw = nn.Linear(features, num_bins)
        self.fc_pitch = nn.Linear(features, num_bins)
        self.fc_roll = nn.Linear(features, num_bins)
        self.fc_finetune = nn.Linear(features + 3, 3)  # vestigial in the original; kept so weights load
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * Bottleneck.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * Bottleneck.expansion),
            )
        layers = [Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc_yaw(x), self.fc_pitch(x), self.fc_roll(x)


def decode_bins(logits: torch.Tensor) -> torch.Tensor:
    """Degrees from bin logits (..., 66): the softmax expectation of the bin index * 3 - 99."""
    logits = torch.as_tensor(logits)
    idx = torch.arange(logits.shape[-1], dtype=torch.float32, device=logits.device)
    return (torch.softmax(logits.float(), dim=-1) * idx).sum(-1) * BIN_WIDTH - BIN_OFFSET


def load_hopenet(path: str | Path) -> Hopenet:
    """A Hopenet in eval mode with weights from a local state dict (e.g. hopenet_robust_alpha1.pkl).

    Raises FileNotFoundError naming the path and where to get the weights when it is missing.
    Accepts a ``module.``-prefixed (DataParallel) dict and one saved by old torch without the
    BatchNorm ``num_batches_tracked`` buffers; any other missing or extra key is an error.
    """
    state = read_state_dict(path, "Hopenet", WEIGHTS_HELP)
    return load_strict(Hopenet(), state, path, "Hopenet (ResNet-50, 66 bins)")


def preprocess(images: list[np.ndarray] | np.ndarray) -> torch.Tensor:
    """RGB uint8 face crops (any square size, e.g. the 512 crop) -> (B, 3, 224, 224) normalised."""
    batch = [images] if isinstance(images, np.ndarray) and images.ndim == 3 else list(images)
    out = np.empty((len(batch), INPUT_SIZE, INPUT_SIZE, 3), np.float32)
    for i, img in enumerate(batch):
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 image, got {img.shape} {img.dtype}")
        out[i] = cv2.resize(img, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_AREA)
    out = (out / 255.0 - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    return torch.from_numpy(out.transpose(0, 3, 1, 2).copy())


class HopenetPose:
    """Head pose of face crops with Hopenet: (yaw, pitch, roll) in degrees, in the frame of
    the crop given. Hopenet was trained on unrotated loose crops of the photo (the head pose
    stage passes `detect_align.loose_view`); the crop goes in whole, resized to 224.
    """

    def __init__(self, weights: str | Path, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.net = load_hopenet(weights).to(self.device)

    @torch.inference_mode()
    def predict_batch(self, images: list[np.ndarray] | np.ndarray) -> np.ndarray:
        """(B, 3) float32 array of yaw, pitch, roll in degrees for a batch of RGB uint8 crops."""
        x = preprocess(images).to(self.device)
        yaw, pitch, roll = (decode_bins(t) for t in self.net(x))
        return torch.stack([yaw, pitch, roll], 1).cpu().numpy().astype(np.float32)

    def __call__(self, image: np.ndarray) -> tuple[float, float, float]:
        yaw, pitch, roll = self.predict_batch([image])[0]
        return float(yaw), float(pitch), float(roll)
