"""A small CNN classifier whose penultimate activations serve as the feature space for local FID/KID/IS.

The Inception-v3 network behind the standard FID (Heusel et al. 2017) is trained on ImageNet and is a poor
and expensive judge of 8x8 digits or 28x28 MNIST; the common substitute on small datasets is a classifier
trained on the dataset itself (as in seed 001 for FashionMNIST). Scores computed with it are only comparable
with scores computed with the *same* classifier (same dataset, architecture and training seed), which is why
:func:`load_or_train_classifier` caches the trained weights under a key that depends on all of these.

Architecture: ``[Conv3x3(32)-ReLU-MaxPool2] -> [Conv3x3(64)-ReLU-MaxPool2] -> FC(feature_dim)-ReLU ->
FC(classes)``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from difflab.data.images import ImageData

__all__ = ["FeatureClassifier", "evaluate_accuracy", "load_or_train_classifier", "train_classifier"]

ImagesLabels = tuple[Tensor, Tensor]


def _pair(data: ImagesLabels | ImageData) -> ImagesLabels:
    if isinstance(data, ImageData):
        return data.images, data.labels
    images, labels = data
    return images, labels


class FeatureClassifier(nn.Module):
    """``conv-ReLU-pool x2 -> FC(feature_dim)-ReLU -> FC(num_classes)``.

    :meth:`features` returns the ``feature_dim`` penultimate activations (after the ReLU), :meth:`forward`
    the logits. Inputs are images ``(B, in_channels, H, W)`` in the dataset scaling (``[-1, 1]`` in difflab).

    Attributes:
        name: label used in metric reports (``"classifier:<name>"``); set by :func:`load_or_train_classifier`.
    """

    def __init__(
        self,
        in_channels: int,
        image_size: int | tuple[int, int],
        num_classes: int = 10,
        feature_dim: int = 128,
        width: int = 32,
    ) -> None:
        super().__init__()
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        self.config = {
            "in_channels": in_channels,
            "image_size": [h, w],
            "num_classes": num_classes,
            "feature_dim": feature_dim,
            "width": width,
        }
        self.name = "unnamed"
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        flat = 2 * width * (h // 4) * (w // 4)
        if flat == 0:
            raise ValueError(f"image_size {image_size} too small (needs at least 4x4)")
        self.fc = nn.Linear(flat, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)

    @property
    def feature_dim(self) -> int:
        return int(self.fc.out_features)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations ``(B, feature_dim)``."""
        return F.relu(self.fc(self.conv(x).flatten(1)))

    def features_and_logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(features(x), forward(x))`` from one pass."""
        f = self.features(x)
        return f, self.head(f)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits ``(B, num_classes)``."""
        return self.head(self.features(x))


@torch.no_grad()
def evaluate_accuracy(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    batch_size: int = 512,
    device: str | torch.device = "cpu",
) -> float:
    """Top-1 accuracy of ``model`` on ``(images, labels)`` (evaluation mode, no gradients)."""
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, images.shape[0], batch_size):
        logits = model(images[i : i + batch_size].to(device))
        correct += int((logits.argmax(1).cpu() == labels[i : i + batch_size]).sum())
    model.train(was_training)
    return correct / max(1, images.shape[0])


def train_classifier(
    train_images: Tensor,
    train_labels: Tensor,
    test_images: Tensor,
    test_labels: Tensor,
    *,
    epochs: int = 5,
    batch_size: int = 64,
    lr: float = 3e-3,
    weight_decay: float = 0.0,
    num_classes: int | None = None,
    feature_dim: int = 128,
    seed: int = 0,
    device: str | torch.device = "cpu",
    verbose: bool = False,
) -> tuple[FeatureClassifier, float]:
    """Train a :class:`FeatureClassifier` (Adam, cross-entropy); return ``(model in eval mode, test acc)``.

    Deterministic for a given ``seed`` on CPU: initialisation uses a forked global RNG seeded with ``seed``
    (the caller's RNG state is untouched), shuffling a dedicated :class:`torch.Generator`.
    """
    if train_images.ndim != 4:
        raise ValueError(f"expected train images (N, C, H, W), got {tuple(train_images.shape)}")
    n_cls = num_classes or int(max(int(train_labels.max()), int(test_labels.max())) + 1)
    c, h, w = (int(s) for s in train_images.shape[1:])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = FeatureClassifier(c, (h, w), num_classes=n_cls, feature_dim=feature_dim).to(device)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * -(-train_images.shape[0] // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(1, steps), pct_start=0.15)
    labels = train_labels.long()
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(train_images.shape[0], generator=gen)
        total = 0.0
        for i in range(0, perm.numel(), batch_size):
            idx = perm[i : i + batch_size]
            x, y = train_images[idx].to(device), labels[idx].to(device)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * idx.numel()
        if verbose:
            print(f"classifier epoch {epoch + 1}/{epochs}: train loss {total / perm.numel():.4f}")
    model.eval()
    acc = evaluate_accuracy(model, test_images, test_labels.long(), device=device)
    return model, acc


def _data_fingerprint(*tensors: Tensor, nbytes: int = 1 << 16) -> str:
    """sha256 over shapes, dtypes and the first/last ``nbytes`` bytes of each tensor."""
    h = hashlib.sha256()
    for t in tensors:
        arr = np.ascontiguousarray(t.detach().cpu().numpy())
        h.update(f"{tuple(arr.shape)}|{arr.dtype}|".encode())
        raw = arr.reshape(-1).view(np.uint8)
        h.update(raw[:nbytes].tobytes())
        h.update(raw[-nbytes:].tobytes())
    return h.hexdigest()


def load_or_train_classifier(
    dataset_name: str,
    train: ImagesLabels | ImageData,
    test: ImagesLabels | ImageData,
    cache_dir: str | Path,
    *,
    epochs: int = 5,
    batch_size: int = 64,
    lr: float = 3e-3,
    feature_dim: int = 128,
    seed: int = 0,
    device: str | torch.device = "cpu",
    verbose: bool = True,
) -> tuple[FeatureClassifier, float]:
    """Return a trained classifier for ``dataset_name`` and its test accuracy, training it only once.

    The state dict and test accuracy are cached at ``cache_dir/classifier_<dataset>_<key>.pt`` where ``key``
    hashes the dataset name, the data fingerprint (shapes and first/last bytes of train and test tensors) and
    the training settings. ``train`` / ``test`` are ``(images, labels)`` pairs or :class:`ImageData`.
    The model's ``name`` attribute is set to ``dataset_name``.
    """
    train, test = _pair(train), _pair(test)
    settings = {
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "feature_dim": feature_dim,
        "seed": seed,
    }
    key = hashlib.sha256(
        json.dumps(
            {"name": dataset_name, "data": _data_fingerprint(*train, *test), **settings}, sort_keys=True
        ).encode()
    ).hexdigest()[:16]
    path = Path(cache_dir) / f"classifier_{dataset_name}_{key}.pt"
    if path.is_file():
        blob = torch.load(path, map_location="cpu", weights_only=True)
        cfg = blob["config"]
        model = FeatureClassifier(
            cfg["in_channels"], tuple(cfg["image_size"]), cfg["num_classes"], cfg["feature_dim"], cfg["width"]
        )
        model.load_state_dict(blob["state_dict"])
        model.to(device).eval()
        acc = float(blob["test_accuracy"])
        if verbose:
            print(f"loaded cached {dataset_name} feature classifier from {path} (test accuracy {acc:.4f})")
    else:
        model, acc = train_classifier(
            *train,
            *test,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            feature_dim=feature_dim,
            seed=seed,
            device=device,
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        torch.save({"state_dict": state, "config": model.config, "test_accuracy": acc}, tmp)
        tmp.replace(path)
        if verbose:
            print(f"trained {dataset_name} feature classifier (test accuracy {acc:.4f}); cached at {path}")
    model.name = dataset_name
    return model, acc
