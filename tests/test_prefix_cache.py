"""PrefixCache with small tensors: the longest shared start wins, a sequence replaces the ones
it starts with, and the byte budget evicts the oldest."""

from __future__ import annotations

import torch

from companion.models._prefix_cache import PrefixCache, common_length


def _kv(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Two layers of (1, 1 head, n tokens, 2 dims) float32 keys and values: 32 n bytes."""
    return [(torch.full((1, 1, n, 2), float(n)), torch.zeros(1, 1, n, 2)) for _ in range(2)]


def test_the_longest_shared_start_is_found():
    cache = PrefixCache(10_000)
    cache.put([1, 2, 3], _kv(3))
    cache.put([1, 2, 9, 9, 9], _kv(5))
    n, kv = cache.longest([1, 2, 9, 9, 4])
    assert n == 4 and kv is not None and kv[0][0].shape[2] == 5
    assert cache.longest([7, 1]) == (0, None)
    assert common_length([1, 2], [1, 2, 3]) == 2


def test_a_sequence_replaces_the_ones_it_starts_with():
    cache = PrefixCache(10_000)
    cache.put([1, 2], _kv(2))
    cache.put([1, 3], _kv(2))
    cache.put([1, 2, 3, 4], _kv(4))  # a prompt's reply finished: the prompt entry goes
    assert len(cache) == 2 and cache.nbytes == 32 * 2 + 32 * 4


def test_the_budget_evicts_the_oldest_and_skips_what_cannot_fit():
    cache = PrefixCache(3 * 64)  # three 2-token entries (64 bytes each)
    for first in (1, 2, 3):
        cache.put([first, 0], _kv(2))
    cache.longest([1, 0])  # used: now the newest
    cache.put([4, 0], _kv(2))
    assert cache.longest([2, 0]) == (0, None)  # the oldest unused entry went
    assert cache.longest([1, 0])[0] == 2 and len(cache) == 3
    cache.put(list(range(100)), _kv(100))  # larger than the budget: not stored
    assert len(cache) == 3 and cache.nbytes <= cache.max_bytes
    assert len(PrefixCache(0)) == 0
