"""Built-in data sets: scikit-learn's bundled ``digits`` (offline) and Keras' downloadable ones."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np

from imgcls.errors import ImgclsError

CIFAR10_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]
FASHION_CLASSES = [
    "T-shirt_top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle_boot",
]
CIFAR100_CLASSES = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly "
    "camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup "
    "dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower "
    "leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid "
    "otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road "
    "rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower "
    "sweet_pepper table tank telephone television tiger tractor train trout tulip turtle wardrobe whale "
    "willow_tree wolf woman worm"
).split()
DIGIT_CLASSES = [str(i) for i in range(10)]

# name -> (keras.datasets module, cache file name, class names, recommended augmentation)
KERAS_DATASETS = {
    "cifar10": ("cifar10", "cifar-10-batches-py", CIFAR10_CLASSES, ("flip", "translate")),
    "cifar100": ("cifar100", "cifar-100-python", CIFAR100_CLASSES, ("flip", "translate")),
    "mnist": ("mnist", "mnist.npz", DIGIT_CLASSES, ("translate",)),
    "fashion_mnist": ("fashion_mnist", "fashion-mnist", FASHION_CLASSES, ("flip", "translate")),
}
BUILTIN_NAMES = ("digits", *KERAS_DATASETS)
DOWNLOAD_TIMEOUT_S = 30  # seconds before an unanswered download counts as offline


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray, list[str], tuple[str, ...]]:
    """scikit-learn's 1,797 8x8 digits as uint8 RGB images (0..16 scaled to 0..255)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    gray = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    images = np.repeat(gray[..., None], 3, axis=-1)
    return images, bunch.target.astype(np.int32), list(DIGIT_CLASSES), ("translate",)


def load_keras_arrays(
    name: str,
) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray, tuple[str, ...]]:
    """Load a Keras data set through its downloader and cache.

    Returns images (uint8 NHWC), labels, class names, the official split of each image
    ("train" or "test") and the recommended augmentation.
    """
    import keras

    module, cache_name, classes, augment = KERAS_DATASETS[name]
    cache_dir = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "datasets"
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        (x_train, y_train), (x_test, y_test) = getattr(keras.datasets, module).load_data()
    except Exception as e:  # noqa: BLE001 - any download failure means the same thing to a user
        cached = (cache_dir / cache_name).exists()
        reason = (
            "the cached copy could not be read"
            if cached
            else "it is not cached and could not be downloaded (offline?)"
        )
        raise ImgclsError(
            f"built-in data set '{name}': {reason} [{type(e).__name__}]. Cache folder: {cache_dir}. "
            "To use local images instead, pass a folder with one sub-folder per class, e.g. "
            "`imgcls train path/to/images --out runs/x`"
        ) from None
    finally:
        socket.setdefaulttimeout(old_timeout)
    images = np.concatenate([x_train, x_test])
    if images.ndim == 3:
        images = np.repeat(images[..., None], 3, axis=-1)
    labels = np.concatenate([y_train, y_test]).reshape(-1).astype(np.int32)
    splits = np.array(["train"] * len(x_train) + ["test"] * len(x_test))
    return images.astype(np.uint8), labels, list(classes), splits, augment
