"""Pure bookkeeping of dynamic batching: merge requests into one batch, split its outputs back.

No clocks, no event loop, no locks: lists of arrays in, arrays out. The queue orchestration lives
in serve/batching.py. Every function here keeps request order, so request ``i`` of a batch owns
rows ``offsets[i]:offsets[i + 1]`` of every input and output.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["BatchSplitError", "merge_inputs", "split_outputs"]


class BatchSplitError(RuntimeError):
    """A model answered a merged batch with outputs whose first axis is not the batch's rows.

    The server's fault or the model's, never the client's: it becomes INTERNAL.
    """


def merge_inputs(
    requests: Sequence[Mapping[str, np.ndarray]],
) -> tuple[dict[str, np.ndarray], list[int]]:
    """Concatenate requests along the batch axis: ({name: [sum rows, ...]}, row offsets).

    ``offsets`` has len(requests) + 1 entries, offsets[0] = 0. One request is passed through
    without a copy.
    """
    first = requests[0]
    offsets = [0]
    for request in requests:
        offsets.append(offsets[-1] + next(iter(request.values())).shape[0])
    if len(requests) == 1:
        return dict(first), offsets
    merged = {name: np.concatenate([r[name] for r in requests], axis=0) for name in first}
    return merged, offsets


def split_outputs(
    outputs: Mapping[str, np.ndarray], offsets: Sequence[int]
) -> list[dict[str, np.ndarray]]:
    """Cut merged outputs ([offsets[-1], ...] each) back into one dict per request (views)."""
    total = offsets[-1]
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != total:
            raise BatchSplitError(
                f"output {name!r} has shape {list(array.shape)} for a batch of {total} rows; "
                f"expected first dimension {total}"
            )
    if len(offsets) == 2:
        return [dict(outputs)]
    return [
        {name: array[start:end] for name, array in outputs.items()}
        for start, end in zip(offsets[:-1], offsets[1:], strict=True)
    ]
