"""Non-IID splits of a labelled data set across clients, by a Dirichlet(α) draw.

For each class, a share vector p ~ Dirichlet(α·1_N) over the N clients splits that class's
samples (in a seeded random order) into contiguous runs. Small α gives each client few
classes; large α approaches an IID split. A draw in which some client gets fewer than
``min_size`` samples is redrawn, as is usual in the federated-learning literature.

Every sample goes to exactly one client, and the same labels, N, α and seed give the same
split on every machine: this is how each edge agent finds its own share without any data
leaving anywhere.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from fedadamw.errors import InvalidArgumentError

__all__ = ["dirichlet_partition"]

_MAX_DRAWS = 1000


def dirichlet_partition(
    labels: NDArray[np.integer],
    *,
    num_clients: int,
    alpha: float,
    seed: int,
    min_size: int = 8,
) -> list[NDArray[np.int64]]:
    """Split sample indices ``0..len(labels)-1`` among ``num_clients`` clients.

    Returns one sorted int64 index array per client; together they hold every index once.

    Raises:
        InvalidArgumentError: ``num_clients < 1``, ``alpha <= 0``, or no draw in
            1,000 gives every client ``min_size`` samples (too many clients for the data).
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise InvalidArgumentError(f"labels must be 1-D, got shape {labels.shape}")
    if num_clients < 1:
        raise InvalidArgumentError(f"num_clients must be >= 1, got {num_clients}")
    if not alpha > 0:
        raise InvalidArgumentError(f"the Dirichlet alpha must be > 0, got {alpha}")
    if num_clients * min_size > len(labels):
        raise InvalidArgumentError(
            f"{len(labels)} samples cannot give {num_clients} clients {min_size} samples each"
        )
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    for _ in range(_MAX_DRAWS):
        parts: list[list[NDArray[np.int64]]] = [[] for _ in range(num_clients)]
        for cls in classes:
            members = rng.permutation(np.flatnonzero(labels == cls)).astype(np.int64)
            shares = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(np.int64)
            for client, run in enumerate(np.split(members, cuts)):
                parts[client].append(run)
        split = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(s) for s in split) >= min_size:
            return split
    raise InvalidArgumentError(
        f"no Dirichlet({alpha}) split of {len(labels)} samples gave all {num_clients} clients "
        f"{min_size} samples in {_MAX_DRAWS} draws; use fewer clients or a larger alpha"
    )
