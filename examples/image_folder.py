"""ASHA over small CNNs on an image folder, with random crop / flip augmentation.

    python examples/image_folder.py [--images 12000] [--smoke-test]

Writes Fashion-MNIST as PNG files in class folders (torchvision's ImageFolder
layout) under ./fashion-mnist-folder, then searches learning rate, width and
augmentation on/off with ASHA on 2 workers. The images stay encoded in the
shards and are decoded per batch on the workers; the augmentation runs there
too, its random draws seeded per batch (so a result is reproducible).

Needs the Debian package dataset-fashion-mnist (or the IDX files in $MODELHOPPER_DATA).
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import modelhopper as mh


def crop_flip(image: torch.Tensor) -> torch.Tensor:
    """One uint8 C x H x W image: a random 28x28 crop of it padded by 2, flipped half the time."""
    padded = nn.functional.pad(image, (2, 2, 2, 2))
    top, left = torch.randint(0, 5, (2,)).tolist()
    image = padded[:, top : top + 28, left : left + 28]
    return image.flip(-1) if torch.rand(()) < 0.5 else image


def to_float(batch: torch.Tensor) -> torch.Tensor:
    """uint8 pixels in 0..255 to float32 in 0..1."""
    return batch.float().div_(255)


def augment(batch: torch.Tensor) -> torch.Tensor:
    return to_float(mh.per_example(crop_flip)(batch))


def make_estimator(p):
    c = p["channels"]
    model = nn.Sequential(
        nn.Conv2d(1, c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c, 2 * c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(2 * c * 7 * 7, 64), nn.ReLU(), nn.Linear(64, 10),
    )  # fmt: skip
    return mh.Estimator(
        model=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=p["lr"]),
        loss=nn.CrossEntropyLoss(),
        metrics=["accuracy"],
        batch_size=64,
        train_transform=augment if p["augment"] else to_float,
        eval_transform=to_float,
    )


SPACE = {
    "lr": mh.loguniform(3e-4, 3e-2),
    "channels": mh.choice([8, 16]),
    "augment": mh.choice([True, False]),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=12_000, help="training images written")
    parser.add_argument("--smoke-test", action="store_true", help="tiny budget, for CI")
    args = parser.parse_args()
    n_images = 400 if args.smoke_test else args.images
    root = mh.datasets.fashion_mnist_folder("fashion-mnist-folder", limit=n_images)
    data = mh.Dataset.from_image_folder(root, fractions=(0.8, 0.2, 0.0), seed=0, mode="L")
    print(f"{len(data.train)} training, {len(data.validation)} validation images, "
          f"classes {', '.join(data.classes)}")  # fmt: skip
    n_msts, max_epochs = (4, 2) if args.smoke_test else (16, 9)
    search = mh.ASHA(make_estimator, SPACE, min_epochs=1, max_epochs=max_epochs,
                     reduction_factor=3, n_msts=n_msts, metric="val_accuracy",
                     direction="maximize", seed=0)  # fmt: skip
    result = search.fit(data, n_workers=2, progress=not args.smoke_test)
    print(result.to_dataframe()[["mst_id", "status", "epochs", "val_accuracy"]].to_string())
    print("best MST:", result.best.params, result.best.metrics)


if __name__ == "__main__":
    main()
