"""Every seed of a job, derived in one place from the job's `seed` (job.yaml), so that a restarted
controller, a resumed trial and a rerun job draw exactly the same numbers.

    trial_seed(job_seed, index)          the seed in trial `index`'s spec.json: data split, model
                                         initialisation, augmentation, batch order
    rank_seed(trial_seed, rank)          one process of a distributed trial (its own augmentations)
    epoch_order_seed(trial_seed, epoch)  the order of the training images in an epoch
    augmentation_seed(trial_seed, epoch, index)  one image's random transform in one epoch, the
                                         same in a resumed epoch and in any loader worker
    sampler_rng(job_seed, index, stream) the sampler's generator for trial `index`; `stream` keeps
                                         independent draws for one trial apart (SamplerStream)
    sampler_seed(job_seed, index)        the same as one integer, for libraries that take a seed

The formulas are those the project has always used, so that jobs seeded before this module keep
their trials' numbers.
"""
from __future__ import annotations

import enum

import numpy as np


class SamplerStream(int, enum.Enum):
    """Independent random streams of one trial's proposal."""
    PROPOSAL = 0       # random search, and Bayesian sampling's initial random points
    SUBSAMPLE = 2      # which observations a GP is fitted on past its size limit
    REDRAW = 3         # a value redrawn from its distribution when the surrogate's fell out of range


# Trials of one job get seeds far apart from those of a job seeded one higher.
_TRIALS_PER_JOB_SEED = 1000
# A prime: the ranks of one trial never share a seed with the ranks of the next trial.
_RANK_STRIDE = 7919


def trial_seed(job_seed: int, index: int) -> int:
    return job_seed * _TRIALS_PER_JOB_SEED + index


def rank_seed(trial_seed: int, rank: int) -> int:
    return trial_seed + _RANK_STRIDE * rank


def epoch_order_seed(trial_seed: int, epoch: int) -> int:
    return trial_seed * 100_003 + epoch


def augmentation_seed(trial_seed: int, epoch: int, index: int) -> int:
    return ((trial_seed * 1_000_003 + epoch) * 10_000_019 + index) % 2**63


def sampler_rng(job_seed: int, index: int, stream: SamplerStream = SamplerStream.PROPOSAL) -> np.random.Generator:
    key = [job_seed, index] if stream is SamplerStream.PROPOSAL else [job_seed, index, int(stream)]
    return np.random.default_rng(key)


def sampler_seed(job_seed: int, index: int) -> int:
    """An integer seed for libraries that take one (scikit-optimize's `random_state`)."""
    return int(np.random.SeedSequence([job_seed, index]).generate_state(1)[0])
