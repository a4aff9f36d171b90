"""How many CPU threads torch uses for a block of work, restored afterwards."""

from __future__ import annotations

import contextlib
from typing import Iterator


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run the block with `count` torch CPU threads (None: leave as is), then restore the previous count.

    Tiny matmuls gain nothing from intra-op threads, and on a shared machine OpenMP threads that
    spin-wait for a busy core slow them down many times over; callers pick 1 for such work.
    """
    if count is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
