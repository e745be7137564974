"""The classic CNN: blocks of 3x3 convolution, batch norm, ReLU, 2x2 max pooling and dropout,
then flatten (small images) or global average pooling (photos), a dense layer with dropout,
and softmax over the classes."""

from __future__ import annotations

from imgcls.models import layer_seed, register_model
from imgcls.models.recipe import Recipe

BN_MOMENTUM = 0.9  # Keras' 0.99 lags badly on small data sets (a few hundred steps in all)
# Above this side (pixels) the head pools globally: a flatten at 224x224 made a 26M-parameter
# dense layer that predicted one class for everything on a few hundred photos.
FLATTEN_MAX_SIDE = 64
POOLS = ("flatten", "avg")

CLASSIC_RECIPE = Recipe(
    epochs=15,
    batch_size=64,
    lr=2e-3,  # AdamW peak, reached after a one-epoch warm-up, then cosine decay to 0
    weight_decay=5e-4,
    label_smoothing=0.0,
    optimizer="adamw",
    # A few hundred photos make 5-10 steps an epoch: train at least this many steps in all
    # (320 photos: 60 epochs of 10; 15 epochs held out 0.57, 60 held out 0.73, bench/photos.py)
    min_total_steps=600,
    min_steps_per_epoch=10,  # smaller data sets get a smaller batch (down to 16)
)

# What `imgcls tune` searches (imgcls.tune.space): around the recipe, AdamW's usual ranges.
CLASSIC_SPACE = {
    "lr": {"min": 3e-4, "max": 1e-2, "log": True},
    "weight_decay": {"min": 1e-5, "max": 1e-2, "log": True},
    "label_smoothing": {"min": 0.0, "max": 0.2},
    "batch_size": {"values": [32, 64, 128]},
    "dropout": {"min": 0.0, "max": 0.4},
    "dense_dropout": {"min": 0.0, "max": 0.6},
    "epochs": {"min": 8, "max": 40},
}


@register_model(
    "classic",
    "3x3 conv blocks + BN + ReLU + max-pool + dropout, dense head",
    recipe=CLASSIC_RECIPE,
    space=CLASSIC_SPACE,
    min_side=8,
)
def classic(
    input_shape: tuple[int, int, int],
    num_classes: int,
    filters: tuple[int, ...] = (32, 64, 128),
    convs_per_block: int = 2,
    dense_units: int = 256,
    dropout: float = 0.1,
    dense_dropout: float = 0.3,
    pool: str | None = None,
):
    """Build the classic network.

    Args:
        input_shape: ``(height, width, 3)``; each block halves the sides, so they must be at
            least ``2 ** len(filters)``.
        num_classes: outputs of the softmax.
        filters: convolution filters per block.
        convs_per_block: 3x3 convolutions before each pooling.
        dense_units: width of the dense layer before the classifier.
        dropout: dropout after each block; ``dense_dropout`` after the dense layer. Light by
            default: with flips and translations, 0.25/0.5 under-fit CIFAR-10 in 10 epochs
            (0.747 test accuracy, train accuracy below validation).
        pool: how the last block's maps become a vector: ``"flatten"`` (keeps where things
            are; best on 32x32 CIFAR) or ``"avg"`` (global average pooling: a few parameters
            per class at any size). Default: flatten up to 64 pixels a side, avg above.
    """
    import keras
    from keras import layers

    from imgcls.errors import check

    check(
        min(input_shape[:2]) >= 2 ** len(filters),
        f"model 'classic' with {len(filters)} blocks needs images of at least {2 ** len(filters)} pixels a side. "
        f"Received: image_size={input_shape[0]} {input_shape[1]}",
    )
    pool = pool or ("flatten" if max(input_shape[:2]) <= FLATTEN_MAX_SIDE else "avg")
    check(pool in POOLS, f"`pool` must be one of {set(POOLS)}. Received: pool={pool!r}")
    inputs = keras.Input(input_shape, name="pixels")
    x = layers.Rescaling(1.0 / 255, name="scale")(inputs)
    for b, f in enumerate(filters):
        for c in range(convs_per_block):
            x = layers.Conv2D(
                f, 3, padding="same", use_bias=False, name=f"block{b + 1}_conv{c + 1}"
            )(x)
            x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"block{b + 1}_bn{c + 1}")(x)
            x = layers.ReLU(name=f"block{b + 1}_relu{c + 1}")(x)
        x = layers.MaxPooling2D(2, name=f"block{b + 1}_pool")(x)
        x = layers.Dropout(dropout, name=f"block{b + 1}_dropout", seed=layer_seed())(x)
    if pool == "flatten":
        x = layers.Flatten(name="flatten")(x)
    else:
        x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dense(dense_units, name="dense")(x)
    x = layers.ReLU(name="dense_relu")(x)
    x = layers.Dropout(dense_dropout, name="dense_dropout", seed=layer_seed())(x)
    x = layers.Dense(num_classes, name="logits")(x)
    outputs = layers.Softmax(dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="classic")
