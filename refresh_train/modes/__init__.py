"""Cache modes: what ``--cache NAME`` selects, and the hooks a training step goes through.

A mode owns the raw-feature tiers (:mod:`refresh_train.tiers`) and, for
``refresh``, the historical embedding cache (:mod:`refresh_train.history`).
It is the trainer's single hook point for everything a cache may change in
a step:

- :meth:`CacheMode.sample` samples the batch a given global step trains on
  (``refresh`` prunes nodes whose embedding it holds and copies those
  embeddings into the batch);
- :meth:`CacheMode.max_ahead` bounds how many batches sampling may run
  ahead of training, so that what a batch's sampling sees does not depend
  on thread timing;
- :meth:`CacheMode.stage` sees windows of :meth:`CacheMode.lookahead_batches`
  sampled batches before their fetch and may read ahead what they need
  (``raw`` and ``refresh`` read each window's disk rows in one pass);
- :meth:`CacheMode.fetch` fills a batch's raw features;
- :meth:`CacheMode.forward` runs the model on a batch;
- :meth:`CacheMode.after_step` sees the batch after the optimiser step
  (admission of fresh embeddings);
- :meth:`CacheMode.end_epoch` runs between epochs (``refresh`` re-divides
  the device budget there);
- :meth:`CacheMode.eval_tiers` gives evaluation an exact path with its own
  counters: evaluation never uses a cache that could change results;
- :meth:`CacheMode.state_dict` / :meth:`CacheMode.load_state_dict` go into
  checkpoints, so that a resumed run continues with the same cache state.

``sample``, ``stage`` and ``fetch`` run in the loader's background threads,
ahead of ``forward``/``after_step``.

======== ==============================================================
name     what it does
======== ==============================================================
none     every raw row from disk (:class:`NoCache`)
raw      hottest rows on the device, recent rows on the host, lookahead
         windows over the disk (:class:`RawCache`)
refresh  ``raw`` plus the selective historical embedding cache, one
         device budget shared by rows and embeddings (:class:`RefreshCache`)
======== ==============================================================
"""

from __future__ import annotations

from .base import CacheMode
from .raw import NoCache, RawCache
from .refresh import RefreshCache

__all__ = ["CacheMode", "NoCache", "RawCache", "RefreshCache", "CACHE_MODES", "register_cache_mode"]

#: Cache modes by ``--cache`` name.
CACHE_MODES: dict[str, type[CacheMode]] = {
    "none": NoCache,
    "raw": RawCache,
    "refresh": RefreshCache,
}


def register_cache_mode(cls: type[CacheMode]) -> type[CacheMode]:
    """Class decorator adding a cache mode to :data:`CACHE_MODES` under ``cls.name``."""
    CACHE_MODES[cls.name] = cls
    return cls
