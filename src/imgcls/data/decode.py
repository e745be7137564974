"""The one decode-and-resize used by training, evaluation, prediction and serving.

Pillow reads the file, EXIF orientation is applied, any mode becomes 8-bit RGB (alpha is
composited on white, 16-bit is scaled, CMYK and palettes converted), and the image is resized
to ``(height, width)`` with an antialiased bilinear filter. Because every stage calls
:func:`load_image`, a model sees exactly the pixels at prediction time that it saw in training.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
MAX_PIXELS = 64_000_000  # width*height above which a file is refused unread (decompression bombs)
RESIZE_FILTER = Image.Resampling.BILINEAR  # Pillow's bilinear antialiases when shrinking
PREPROCESSING = {  # stored in every bundle so later stages can check they decode the same way
    "decoder": "pillow",
    "exif_transpose": True,
    "color": "RGB",
    "alpha": "composite_on_white",
    "resize": "bilinear_antialias",
    "keep_aspect": False,
    "dtype": "uint8",
    "scale_in_model": "Rescaling inside the model maps 0..255",
}

# The formats Pillow may report for each extension we accept.
_FORMATS_BY_EXT = {
    ".jpg": {"JPEG", "MPO"},
    ".jpeg": {"JPEG", "MPO"},
    ".png": {"PNG"},
    ".bmp": {"BMP", "DIB"},
    ".gif": {"GIF"},
    ".webp": {"WEBP"},
    ".tif": {"TIFF"},
    ".tiff": {"TIFF"},
}

Source = str | os.PathLike | bytes | Image.Image


class DecodeError(Exception):
    """A file that cannot become an image. ``kind`` is a scan issue kind."""

    def __init__(self, kind: str, detail: str, path: str | None = None):
        super().__init__(f"{path + ': ' if path else ''}{detail}")
        self.kind = kind  # "unreadable", "not_an_image" or "too_large"
        self.detail = detail
        self.path = path


@dataclass
class ImageInfo:
    """What the decoder found: original format, mode and size, and how it was converted."""

    format: str | None
    mode: str
    width: int
    height: int
    conversion: str | None = None  # e.g. "CMYK converted to RGB"; None when already RGB
    extension_ok: bool = True  # False when the content does not match the file extension


def is_image_file(path: str | os.PathLike) -> bool:
    """True for a visible file whose extension is one imgcls reads."""
    name = os.path.basename(path)
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def read_image(
    source: Source, size: tuple[int, int] | None = None, max_pixels: int = MAX_PIXELS
) -> tuple[np.ndarray, ImageInfo]:
    """Decode ``source`` to an RGB uint8 array of shape ``(height, width, 3)``.

    Args:
        source: a file path, the file's bytes, or an opened Pillow image.
        size: ``(height, width)`` to resize to; ``None`` keeps the original size.
        max_pixels: width x height above which the file is refused from its header, unread.

    Returns:
        The pixels and an :class:`ImageInfo` describing the original file.

    Raises:
        DecodeError: the file is empty, truncated, not an image, or too large to decode safely.
    """
    path = None if isinstance(source, (bytes, Image.Image)) else str(source)
    img = _open(source, path, max_pixels)
    info = ImageInfo(img.format, img.mode, img.width, img.height)
    if path is not None and img.format is not None:
        expected = _FORMATS_BY_EXT.get(os.path.splitext(path)[1].lower())
        info.extension_ok = expected is None or img.format in expected
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's EXIF/palette warnings are not actionable
            if isinstance(source, Image.Image):  # the caller's image: never changed
                img = ImageOps.exif_transpose(img) or img
            else:  # in place: without an orientation the default copies (119 MB at 40 MP)
                ImageOps.exif_transpose(img, in_place=True)
            rgb, info.conversion = _to_rgb(img)
            if size is not None and rgb.size != (size[1], size[0]):
                rgb = rgb.resize((size[1], size[0]), RESIZE_FILTER)
            array = np.asarray(rgb, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DecodeError("unreadable", f"cannot decode pixels ({_short(e)})", path) from None
    return array, info


def load_image(
    source: Source, size: tuple[int, int] | None = None, max_pixels: int = MAX_PIXELS
) -> np.ndarray:
    """Decode ``source`` to RGB uint8 ``(height, width, 3)``; see :func:`read_image`."""
    return read_image(source, size, max_pixels)[0]


def resize_array(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize uint8 images ``(N, H, W)`` or ``(N, H, W, C)`` to RGB ``(N, *size, 3)``.

    Used for built-in data sets that arrive as arrays, through the same Pillow path as files.
    """
    out = np.empty((len(images), size[0], size[1], 3), dtype=np.uint8)
    for i, image in enumerate(images):
        out[i] = load_image(Image.fromarray(np.ascontiguousarray(image).squeeze()), size)
    return out


def _open(source: Source, path: str | None, max_pixels: int = MAX_PIXELS) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    if path is not None:
        try:
            n_bytes = os.path.getsize(path)
        except OSError as e:
            raise DecodeError("unreadable", f"cannot read file ({_short(e)})", path) from None
        if n_bytes == 0:
            raise DecodeError("unreadable", "file is empty (0 bytes)", path)
    elif len(source) == 0:
        raise DecodeError("unreadable", "no bytes received")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path if path is not None else io.BytesIO(source))
    except UnidentifiedImageError:
        raise DecodeError(
            "not_an_image", "content is not an image format Pillow reads", path
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DecodeError("too_large", f"refused before decoding: {_short(e)}", path) from None
    except (OSError, ValueError, SyntaxError) as e:
        raise DecodeError("unreadable", f"cannot open ({_short(e)})", path) from None
    if img.width * img.height > max_pixels:
        raise DecodeError(
            "too_large",
            f"{img.width}x{img.height} pixels exceeds the limit of {max_pixels:,}; "
            "refused before decoding",
            path,
        )
    try:
        img.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DecodeError("unreadable", f"truncated or corrupt ({_short(e)})", path) from None
    return img


def _to_rgb(img: Image.Image) -> tuple[Image.Image, str | None]:
    mode = img.mode
    if mode == "RGB":
        return img, None
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        gray = np.clip(arr * (255.0 / peak), 0, 255).round().astype(np.uint8)
        bits = "16-bit" if peak > 255 else f"{mode}-mode"
        return Image.fromarray(gray, "L").convert("RGB"), f"{bits} grayscale scaled to 8-bit RGB"
    if mode == "P" and "transparency" in img.info or mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert(
            "RGB"
        ), f"{mode} with alpha composited on white"
    if mode == "P":
        return img.convert("RGB"), "palette (P) converted to RGB"
    if mode in ("L", "1"):
        return img.convert("RGB"), f"grayscale ({mode}) converted to RGB"
    return img.convert("RGB"), f"{mode} converted to RGB"


def _short(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text if len(text) <= 160 else text[:157] + "..."
