"""Which examples an epoch visits, in which order: dataset mixing by ratios, seeded shuffling.

Everything is a pure function of (seed, epoch), so a resumed run recomputes the exact order
instead of storing sampler state. Ratios (``data.train_dataset_ratios``) are either a mapping
``pattern → ratio`` or a list of ``{datasets: name | [names], ratio}``; ``name`` matches every layer
of a dataset, ``name@lN`` one layer. An epoch is one pass over the group that is smallest relative
to its ratio; larger groups are subsampled (afresh each epoch if ``resample_each_epoch``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import SelfieError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Group:
    datasets: tuple[int, ...]  # dataset ids
    ratio: float


def parse_ratios(spec, dataset_names: list[str], what: str = "data.train_dataset_ratios") -> list[Group] | None:
    """Ratio spec → groups of dataset ids; None means "every example once per epoch"."""
    if spec is None:
        return None
    if isinstance(spec, dict):
        items = [([k], v) for k, v in spec.items()]
    elif isinstance(spec, list):
        items = []
        for entry in spec:
            if not isinstance(entry, dict) or set(entry) != {"datasets", "ratio"}:
                raise SelfieError(f"{what}: each list entry must be {{datasets: name | [names], ratio: r}}, "
                                  f"got {entry!r}")
            names = entry["datasets"]
            items.append(([names] if isinstance(names, str) else list(names), entry["ratio"]))
    else:
        raise SelfieError(f"{what} must be a mapping pattern → ratio or a list of {{datasets, ratio}}, got {spec!r}")
    groups, taken = [], {}
    for patterns, ratio in items:
        if not isinstance(ratio, (int, float)) or ratio <= 0:
            raise SelfieError(f"{what}: ratio for {patterns} must be a positive number, got {ratio!r}")
        ids: list[int] = []
        for pattern in patterns:
            hits = [i for i, n in enumerate(dataset_names) if n == pattern or n.startswith(f"{pattern}@l")]
            if not hits:
                raise SelfieError(f"{what}: pattern {pattern!r} matches no dataset; "
                                  f"datasets: {', '.join(dataset_names)}")
            for i in hits:
                if i in taken and taken[i] != tuple(patterns):
                    raise SelfieError(f"{what}: dataset {dataset_names[i]!r} is in two groups")
                taken[i] = tuple(patterns)
            ids += [i for i in hits if i not in ids]
        groups.append(Group(tuple(ids), float(ratio)))
    unused = [n for i, n in enumerate(dataset_names) if i not in taken]
    if unused:
        log.warning("%s: datasets not matched by any pattern are left out: %s", what, ", ".join(unused))
    return groups


class EpochSampler:
    """Example order per epoch for a split with per-example dataset ids."""

    def __init__(self, dataset_ids: torch.Tensor, groups: list[Group] | None, *, shuffle: bool, seed: int,
                 resample_each_epoch: bool = True, debug: bool = False) -> None:
        self.dataset_ids, self.groups, self.shuffle = dataset_ids, groups, shuffle
        self.seed, self.resample, self.debug = seed, resample_each_epoch, debug
        if groups is not None:
            self.pools = [torch.nonzero(torch.isin(dataset_ids, torch.tensor(g.datasets)))[:, 0] for g in groups]
            for g, pool in zip(groups, self.pools):
                if len(pool) == 0:
                    raise SelfieError(f"dataset group {g.datasets} has no examples in this split")
            units = min(len(p) / g.ratio for p, g in zip(self.pools, groups))
            self.sizes = [min(len(p), max(1, int(units * g.ratio))) for p, g in zip(self.pools, groups)]

    def epoch_length(self) -> int:
        return len(self.dataset_ids) if self.groups is None else sum(self.sizes)

    def order(self, epoch: int) -> torch.Tensor:
        """(epoch_length,) example indices of this epoch."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        if self.groups is None:
            chosen = torch.arange(len(self.dataset_ids))
        else:
            sub = gen if self.resample else torch.Generator().manual_seed(self.seed * 1_000_003)
            parts = [pool[torch.randperm(len(pool), generator=sub)[:n]] for pool, n in zip(self.pools, self.sizes)]
            chosen = torch.cat(parts).sort().values
            if self.debug:
                log.info("epoch %d mixing: %s", epoch, {g.datasets: n for g, n in zip(self.groups, self.sizes)})
        if self.shuffle:
            chosen = chosen[torch.randperm(len(chosen), generator=gen)]
        return chosen


def validation_subset(val, dataset_names: list[str], ratios, fraction: float, seed: int, train_ratios=None):
    """The fixed validation examples, as the reference trainer picks them (its published val losses).

    With ``val_dataset_ratios`` the named datasets are mixed by ratio (one fixed draw); without them but
    with ``train_dataset_ratios``, only the datasets those name (the reference loads no others). Then
    ``int(n · val_fraction)`` examples: ``np.random.RandomState(seed).choice(n, size, replace=False)``,
    sorted. ``val`` is a ``data.Split``.
    """
    if ratios is not None:
        groups = parse_ratios(ratios, dataset_names, "data.val_dataset_ratios")
        mixed = EpochSampler(val.dataset_ids, groups, shuffle=False, seed=seed, resample_each_epoch=False)
        val = val.subset(mixed.order(0))
    elif train_ratios is not None:
        named = {i for g in parse_ratios(train_ratios, dataset_names) for i in g.datasets}
        val = val.subset(torch.nonzero(torch.isin(val.dataset_ids, torch.tensor(sorted(named))))[:, 0])
    if fraction >= 1.0:
        return val
    size = max(1, int(len(val) * fraction))  # the reference would validate on nothing at size 0
    chosen = np.sort(np.random.RandomState(seed).choice(len(val), size=size, replace=False))
    return val.subset(torch.from_numpy(chosen).long())
