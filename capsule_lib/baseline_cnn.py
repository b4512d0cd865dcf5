"""The CNNs Sabour et al. (2017) compare CapsNet with: BaselineCNN (their MNIST table) and
PoolingCNN (the kind of CNN of their affNIST test).

    images [B, 1, 28, 28]
      -> 3 convolutions 5x5, stride 1, same padding, ReLU, no pooling:
         256, 256, 128 channels                              [B, 128, 28, 28]
      -> FC 328 ReLU -> FC 192 ReLU -> dropout -> FC 10      [B, 10] logits

With the paper's sizes it has 35,445,522 parameters ("35.4M"). The paper says only that the
last hidden layer reaches the 10-way softmax "with dropout"; the dropout rate 0.5 is our
choice. `channels` and `hidden` shrink it, e.g. to a CNN of about CapsNet's size that trains
on a CPU; the paper's sizes are the defaults.

PoolingCNN: for the affNIST test the paper names only "a traditional convolutional model (with
MaxPooling and DropOut)". Ours:

    images [B, 1, 28, 28]
      -> conv 5x5 128, ReLU, max-pool 2x2                    [B, 128, 14, 14]
      -> conv 5x5 192, ReLU, max-pool 2x2                    [B, 192, 7, 7]
      -> conv 5x5 256, ReLU                                  [B, 256, 7, 7]
      -> FC 512 ReLU -> dropout 0.5 -> FC 10                 [B, 10] logits

8,275,146 parameters and 190M multiply-accumulates per image, against CapsNet's 8,215,568 and
203M: a CNN of CapsNet's size and cost (the sizes are our choice).
"""
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checks import (check_images, check_label_range, check_labels, check_not_empty,
                     labels_are_cheap_to_read)
from .interfaces import ModelOutput


class BaselineCNN(nn.Module):
    def __init__(self, channels: Sequence[int] = (256, 256, 128),
                 hidden: Sequence[int] = (328, 192), dropout: float = 0.5,
                 n_classes: int = 10):
        super().__init__()
        convs, in_channels = [], 1
        for out_channels in channels:
            convs += [nn.Conv2d(in_channels, out_channels, 5, padding=2), nn.ReLU()]
            in_channels = out_channels
        self.features = nn.Sequential(*convs, nn.Flatten())
        layers, width = [], in_channels * 28 * 28
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        self.classifier = nn.Sequential(*layers, nn.Dropout(dropout), nn.Linear(width, n_classes))

    def forward(self, images: Tensor, labels: Tensor | None = None) -> ModelOutput:
        """labels are accepted for the common model contract and not used."""
        check_images(images, (1, 28, 28), type(self).__name__)
        if labels is not None:
            check_labels(labels, images.shape[0], f"{type(self).__name__}.forward", 10)
        features = self.features(images)                              # [B, features]
        return ModelOutput(scores=self.classifier(features))          # logits [B, 10]

    def loss(self, output: ModelOutput, images: Tensor, labels: Tensor) -> Tensor:
        """Cross-entropy of the logits (softmax included)."""
        n_classes = output.scores.shape[1]
        check_not_empty(output.scores.shape[0], "BaselineCNN.loss")
        check_labels(labels, output.scores.shape[0], "BaselineCNN.loss", n_classes)
        if labels_are_cheap_to_read(labels):
            check_label_range(labels, n_classes, "BaselineCNN.loss")
        return F.cross_entropy(output.scores, labels)


class PoolingCNN(BaselineCNN):
    """A conventional CNN with max-pooling after each of the first two convolutions and dropout
    before the output layer; forward and loss are BaselineCNN's (logits, cross-entropy)."""

    def __init__(self, channels: Sequence[int] = (128, 192, 256), hidden: int = 512,
                 dropout: float = 0.5, n_classes: int = 10):
        nn.Module.__init__(self)
        layers, in_channels, side = [], 1, 28
        for index, out_channels in enumerate(channels):
            layers += [nn.Conv2d(in_channels, out_channels, 5, padding=2), nn.ReLU()]
            if index < 2:
                layers.append(nn.MaxPool2d(2))
                side //= 2
            in_channels = out_channels
        self.features = nn.Sequential(*layers, nn.Flatten())          # [B, 256 * 7 * 7]
        self.classifier = nn.Sequential(nn.Linear(in_channels * side * side, hidden), nn.ReLU(),
                                        nn.Dropout(dropout), nn.Linear(hidden, n_classes))
