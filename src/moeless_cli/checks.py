"""The one validation layer for numbers that come from a user or a file.

Every option value and every number read from a plan, profile, predictor, CSV or trace goes
through these checks before it sizes an array, a loop or a sleep: right type (`true` is not a
count, 2.5 is not an expert id), finite (no NaN or inf), and within bounds that what the data or
the machine can hold sets. Each failure is a one-line MoelessError naming the field at fault.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from moeless_cli.errors import MoelessError

# Bounds far above any real deployment, low enough that arrays sized by them fit in memory and
# loops over them finish: DeepSeek-V3 has 61 layers x 256 experts and serves on a few hundred GPUs.
MAX_GPUS = 1024  # expert-parallel GPUs (or serve workers): a plan's topology has G^2 links
MAX_NODES = MAX_GPUS  # nodes those GPUs are spread over
MAX_EXPERTS = 65536  # experts per MoE layer
MAX_LAYERS = 4096  # layers of a model (MoE or dense)
MAX_TOKENS = 1 << 24  # tokens in one prompt, one output, one batch or one token budget
MAX_COUNT = 1 << 30  # other counts: prompts, requests, epochs, samples
MAX_SEED = 2**32 - 1  # numpy and torch seeds are unsigned 32-bit
MAX_SECONDS = 31 * 24 * 3600.0  # a served trace's span, a keep-alive or a time limit: a month
MAX_TIMESTAMP = 1e13  # a raw arrival time: seconds or milliseconds since 1970, up to the year 2286
MAX_FLOAT = 1e15  # any other measured quantity (GB, MB, GB/s, USD): finite and far from overflow
MEMORY_SHARE = 0.5  # one array may take at most this share of the memory available now


def shown(value: Any, limit: int = 40) -> str:
    """The value as an error message shows it: its repr, cut to `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 3]}..."


def _bound(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def _check_bounds(what: str, value: float, low: float | None, high: float | None) -> None:
    if low is not None and value < low:
        floor = "non-negative" if low == 0 else f"at least {_bound(low)}"
        raise MoelessError(f"{what} must be {floor}, got {shown(value)}")
    if high is not None and value > high:
        raise MoelessError(f"{what} must be at most {_bound(high)}, got {shown(value)}")


def integer(what: str, value: Any, low: int | None = None, high: int | None = None) -> int:
    """`value` as an int within [low, high]: bools, fractions, NaN and strings are refused.

    Floats that hold a whole number (3.0, as JSON writers sometimes emit) are accepted."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise MoelessError(f"{what} must be an integer, got {shown(value)}")
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value) or value != math.floor(value):
            raise MoelessError(f"{what} must be an integer, got {shown(value)}")
    _check_bounds(what, value, low, high)
    return int(value)


def optional_integer(what: str, value: Any, low: int | None = None, high: int | None = None) -> int | None:
    """None, or `integer(...)`."""
    return None if value is None else integer(what, value, low, high)


def number(what: str, value: Any, low: float | None = None, high: float | None = MAX_FLOAT,
           positive: bool = False) -> float:
    """`value` as a finite float within [low, high] (and > 0 when `positive`); bools are refused."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise MoelessError(f"{what} must be a number, got {shown(value)}")
    try:
        result = float(value)
    except OverflowError:  # an int beyond any float
        result = math.inf
    if not math.isfinite(result):
        raise MoelessError(f"{what} must be a finite number, got {shown(value)}")
    if positive and result <= 0:
        raise MoelessError(f"{what} must be positive, got {shown(value)}")
    _check_bounds(what, result, low, high)
    return result


def optional_number(what: str, value: Any, low: float | None = None, high: float | None = MAX_FLOAT,
                    positive: bool = False) -> float | None:
    """None, or `number(...)`."""
    return None if value is None else number(what, value, low, high, positive)


def seed(what: str, value: Any) -> int:
    """A seed numpy and torch both accept."""
    return integer(what, value, 0, MAX_SEED)


def finite_array(what: str, array: np.ndarray, nonnegative: bool = False, high: float | None = None) -> np.ndarray:
    """Refuse NaN or infinite entries, negative ones when `nonnegative`, and ones above `high`."""
    array = np.asarray(array)
    if array.dtype.kind == "f" and array.size and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise MoelessError(f"{what} holds {bad} NaN or infinite value(s)")
    if nonnegative and array.dtype.kind in "if" and array.size and array.min() < 0:
        raise MoelessError(f"{what} holds negative values")
    if high is not None and array.dtype.kind in "iuf" and array.size and np.abs(array).max() > high:
        raise MoelessError(f"{what} holds values above {high:g}")
    return array


def finite_sum(what: str, array: np.ndarray) -> float:
    """The sum of a finite array, refused when it overflows to inf (counts near 1e308)."""
    with np.errstate(over="ignore", invalid="ignore"):
        total = float(np.asarray(array, dtype=np.float64).sum())
    if not math.isfinite(total):
        raise MoelessError(f"{what} sum to more than a float can hold ({shown(total)})")
    return total


def available_memory() -> int:
    """Bytes of memory available now (MemAvailable on Linux, else physical memory)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (OSError, ValueError, AttributeError):
        return 1 << 34


def fits_in_memory(what: str, shape: tuple[int, ...], itemsize: int = 8) -> None:
    """Refuse an array of `shape` that would take more than MEMORY_SHARE of the memory available."""
    need = itemsize * math.prod(int(n) for n in shape)
    room = int(available_memory() * MEMORY_SHARE)
    if need > room:
        dims = " x ".join(str(int(n)) for n in shape)
        raise MoelessError(f"{what} would take {need / 2**30:.1f} GiB ({dims}); this machine has "
                           f"{room / 2**30:.1f} GiB to spare")
