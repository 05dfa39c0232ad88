"""Synthetic datasets written in the on-disk layouts of the real ones.

Real downloads (ogbn-papers100M is 57 GB of features, MAG240M 187 GB) are not
reachable from CI, yet every converter test and benchmark needs data that
looks like them. :func:`make_dataset` writes a graph of any size, streaming
block by block with bounded memory, in one of three layouts:

``"ogbn"``
    the ogbn-* CSV layout read by ``ogb.nodeproppred.NodePropPredDataset``
    (as ``ogbn-products`` by default, or ``ogbn-arxiv``);
``"papers100m"``
    ogbn-papers100M's binary layout (``raw/data.npz``, ``raw/node-label.npz``);
``"mag240m"``
    MAG240M's ``ogb.lsc`` layout (``processed/*/*.npy``, ``meta.pt``,
    ``split_dict.pt``).

The graph has what matters to the rest of the project: a power-law in-degree
with tunable skew (Chung-Lu: a node of popularity rank s receives edges with
probability proportional to ``(s + 10) ** -skew``, so the in-degree tail
exponent is about ``1 + 1 / skew``), a lighter-tailed Poisson out-degree,
isolated nodes (1 %), nodes that only cite (5 %), self-loops and repeated
edges, and planted communities: the label is the community, a fraction
``homophily`` of edges stays inside it, and features are the community's
centroid plus strong noise, so averaging over neighbours recovers the label
far better than a node's own features do. Node ids are a pseudo-random
permutation of the popularity rank, so degree reordering has work to do.

Every value is a function of the seed and the node id (counter-based random
streams), so the bytes written do not depend on ``block_rows`` or on the
number of threads.

The modules follow the generator's data flow: ``_graph.py`` (specs, domains,
relations), ``_blocks.py`` (node attributes, features and edge rows per
block) written through ``_streams.py`` (.npy, zip and gzip CSV writers) by
one module per layout (``_ogbn.py``, ``_papers100m.py``, ``_mag240m.py``);
``_make_dataset.py`` checks the arguments and writes the folder atomically;
the Numba kernels are in ``_kernels.py``.
"""

from __future__ import annotations

from ._make_dataset import INFO_FILE, LAYOUTS, dataset_dir, make_dataset

__all__ = ["INFO_FILE", "LAYOUTS", "dataset_dir", "make_dataset"]
