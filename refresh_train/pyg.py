"""PyG remote backend over a ReFresh store: feature store, graph store and sampler.

A store plugs into PyTorch Geometric's remote-backend API so that a plain
``torch_geometric.nn`` model trains from it with PyG's own ``NodeLoader`` and no
pyg-lib or torch-sparse::

    from torch_geometric.loader import NodeLoader
    from refresh_train.pyg import open_pyg

    feature_store, graph_store, sampler = open_pyg("stores/products", num_neighbors=[10, 5])
    train_idx = zarr.open_group("stores/products", mode="r")["train_idx"][:]
    loader = NodeLoader(data=(feature_store, graph_store), node_sampler=sampler,
                        input_nodes=train_idx, batch_size=512, shuffle=True)
    for batch in loader:   # torch_geometric.data.Data: x, y, edge_index, n_id, batch_size
        out = model(batch.x, batch.edge_index)[: batch.batch_size]

Pieces
------
:class:`StoreFeatureStore`
    A ``FeatureStore`` with ``x`` (the features) and ``y`` (the labels, int64,
    -1 = unlabelled) in group ``None``. ``get_tensor`` gathers ``x`` rows
    through this project's raw-feature tiers: the device tier (the hottest
    rows on the compute device), the host tier (a RAM buffer with a
    replacement policy) and the disk tier (the I/O scheduler). With both
    budgets 0 every row is read from disk by the I/O scheduler. ``stats()``
    gives the tiers' row and byte counters (memory access per tier).
:class:`StoreGraphStore`
    A ``GraphStore`` holding one edge type (``None``) in the ``csc`` layout:
    ``get_edge_index(None, "csc")`` returns ``(row, colptr)`` = the store's
    ``(indices, indptr)`` as tensors over copy-on-write memory maps of the
    shard files, so nothing is copied or read until used. Ids are the
    store's (degree-reordered) ids, whatever ``ids`` the other two use.
:class:`StoreNeighborSampler`
    The project's Numba sampler (:class:`~refresh_train.sampler.NeighborSampler`)
    as a PyG ``BaseSampler``. ``num_neighbors`` lists fanouts from the seeds
    outward (PyG's convention). Its output matches PyG's ``NeighborSampler``
    with ``disjoint=False``: nodes in order of the hop that first reached
    them (seeds first), each node expanded once at that hop, edges grouped
    by hop, with ``num_sampled_nodes``/``num_sampled_edges`` per hop (so
    ``trim_to_layer`` works). Draws are deterministic per ``seed`` and batch.

Ids
---
``ids="store"`` (the default): ``input_nodes``, ``n_id`` and the feature
store's indices are the store's reordered ids, e.g. the store's own
``train_idx``. ``ids="original"``: they are the ids of the converted source
(``old_id``/``new_id`` translate), e.g. the ``train_idx.npy`` of the source or
of ``refresh-convert export``. The feature store and the sampler of one
:func:`open_pyg` call share the id space; the graph store is always in store
ids.

PyG 2.8's ``NodeLoader`` accepts ``input_nodes`` only as a tensor, list or
tuple for a ``(FeatureStore, GraphStore)`` pair. Importing this module
extends it, for pairs whose feature store is a :class:`StoreFeatureStore`
only, to any integer array (numpy, memory map, the zarr array of the
store's split): it is converted to a tensor. Nothing else changes.

Use ``num_workers=0``: the sampler and the I/O scheduler already run their
own threads, and the tiers are not meant to be copied into worker processes.
"""

from __future__ import annotations

import functools
import itertools
import os
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch_geometric.data import EdgeAttr, FeatureStore, GraphStore, TensorAttr
from torch_geometric.sampler import BaseSampler, NodeSamplerInput, SamplerOutput

from refresh_store.errors import RefreshError
from refresh_store.io import IOConfig
from refresh_store.store import Store, open_store

from .epoch import derive_seed
from .sampler import NeighborSampler
from .tiers import FeatureTier, build_raw_tiers, resolve_device

__all__ = [
    "PygAdapterError",
    "StoreFeatureStore",
    "StoreGraphStore",
    "StoreNeighborSampler",
    "open_pyg",
]

ID_SPACES = ("store", "original")


class PygAdapterError(RefreshError, ValueError):
    """Bad input to the PyG adapter: an unknown id space, ids out of range, a read-only write."""


def _open(store: str | os.PathLike[str] | Store) -> Store:
    return store if isinstance(store, Store) else open_store(store)


def _check_id_space(store: Store, ids: str) -> None:
    if ids not in ID_SPACES:
        raise PygAdapterError(f"ids must be 'store' or 'original'; got {ids!r}")
    if ids == "original":
        for name in ("new_id", "old_id"):
            shape = tuple(store.array(name).shape)
            if shape != (store.num_nodes,):
                raise PygAdapterError(
                    f"store {str(store.path)!r}: {name} has shape {list(shape)} for "
                    f"{store.num_nodes} nodes; its original id space does not match — use ids='store'"
                )


def _mapped_tensor(store: Store, name: str) -> torch.Tensor:
    """Array ``name`` as a tensor over a copy-on-write memory map: no copy, no read-only warning."""
    region = store.region(name)
    shape = (region.nrows, *region.row_shape)
    if region.nrows == 0:
        return torch.from_numpy(np.empty(shape, dtype=region.dtype))
    store.array(name)  # refuses a shard whose chunks are out of order
    mm = np.memmap(
        region.path, dtype=region.dtype, mode="c", offset=int(region.chunk_offsets[0]), shape=shape
    )
    return torch.from_numpy(mm)


def _as_ids(index: Any, what: str) -> np.ndarray:
    """A 1-D int64 numpy array of ids from a tensor, array, list, range or zarr array."""
    if isinstance(index, torch.Tensor):
        if index.dtype == torch.bool:
            index = index.nonzero().view(-1)
        arr = index.detach().cpu().numpy()
    else:
        arr = np.asarray(index[:] if hasattr(index, "oindex") else index)  # zarr.Array: read it
        if arr.dtype == np.bool_:
            arr = np.flatnonzero(arr)
    if arr.ndim != 1 or not (arr.size == 0 or np.issubdtype(arr.dtype, np.integer)):
        raise PygAdapterError(
            f"{what} must be a 1-D array of integer node ids; got shape {arr.shape} dtype {arr.dtype}"
        )
    return np.ascontiguousarray(arr, dtype=np.int64)


class _IdSpace:
    """Translates between the user's id space and the store's ids, checking ranges."""

    def __init__(self, store: Store, ids: str) -> None:
        _check_id_space(store, ids)
        self.store, self.ids, self.n = store, ids, store.num_nodes

    def _check(self, v: np.ndarray, what: str) -> None:
        if v.size and (int(v.min()) < 0 or int(v.max()) >= self.n):
            bad = int(v.min()) if int(v.min()) < 0 else int(v.max())
            hint = (
                "original ids: pass ids='store' if these are the store's ids"
                if self.ids == "original"
                else "store ids: pass ids='original' if these are the source's ids"
            )
            raise PygAdapterError(
                f"{what} holds node {bad}, outside [0, {self.n}) of store "
                f"{str(self.store.path)!r} ({hint})"
            )

    def to_store(self, index: Any, what: str) -> np.ndarray:
        v = _as_ids(index, what)
        self._check(v, what)
        if self.ids == "original":
            v = np.asarray(self.store.new_id[v], dtype=np.int64)
        return v

    def from_store(self, v: torch.Tensor) -> torch.Tensor:
        if self.ids == "store":
            return v
        return torch.from_numpy(np.asarray(self.store.old_id[v.numpy()], dtype=np.int64))


# ----------------------------------------------------------------------------- features


class StoreFeatureStore(FeatureStore):
    """Read-only PyG ``FeatureStore`` over a store's features (``x``) and labels (``y``).

    Parameters
    ----------
    store
        A store folder or an open :class:`~refresh_store.store.Store`.
    ids
        ``"store"`` or ``"original"``: the id space of ``index`` (module docstring).
    device
        Where ``x`` and ``y`` are returned; the device tier lives there.
    cache_budget_bytes
        Bytes of the device tier (the hottest rows, a prefix of the store).
    host_budget_bytes
        Bytes of the host tier's buffer (0 = no host caching).
    host_policy
        Replacement policy of the host tier (``clock``, ``s3fifo``, ``lru``).
    io
        I/O scheduler settings of the disk tier.
    tiers
        An already built tier chain to use instead (the budgets are then ignored).
    """

    def __init__(
        self,
        store: str | os.PathLike[str] | Store,
        *,
        ids: str = "store",
        device: torch.device | str = "cpu",
        cache_budget_bytes: int = 0,
        host_budget_bytes: int = 0,
        host_policy: str = "clock",
        io: IOConfig | None = None,
        tiers: FeatureTier | None = None,
    ) -> None:
        super().__init__()
        st = _open(store)
        if cache_budget_bytes < 0 or host_budget_bytes < 0:
            raise PygAdapterError(
                f"budgets must be >= 0 bytes; got cache_budget_bytes={cache_budget_bytes!r}, "
                f"host_budget_bytes={host_budget_bytes!r}"
            )
        self.store = st
        self.id_space = _IdSpace(st, ids)
        self.device = resolve_device(device)
        if tiers is None:
            try:
                tiers = build_raw_tiers(
                    st,
                    device=self.device,
                    cache_budget_bytes=int(cache_budget_bytes),
                    host_budget_bytes=int(host_budget_bytes),
                    host_policy=host_policy,
                    io=io,
                )
            except (KeyError, ValueError) as exc:
                if isinstance(exc, RefreshError):
                    raise
                raise PygAdapterError(f"feature tiers of {str(st.path)!r}: {exc}") from None
        self.tiers = tiers
        self._lock = threading.Lock()  # a tier chain serves one batch at a time

    @property
    def ids(self) -> str:
        """The id space of ``index`` arguments: ``"store"`` or ``"original"``."""
        return self.id_space.ids

    def _rows(self, attr: TensorAttr) -> np.ndarray | None:
        index = attr.index
        if index is None:
            return None
        if isinstance(index, slice):
            index = range(*index.indices(self.store.num_nodes))
        return self.id_space.to_store(index, f"index of {attr.attr_name!r}")

    def _get_tensor(self, attr: TensorAttr) -> torch.Tensor | None:
        if attr.group_name is not None or attr.attr_name not in ("x", "y"):
            return None
        rows = self._rows(attr)
        if attr.attr_name == "x":
            if rows is None:  # the whole matrix: a memory map, in store order
                if self.ids == "original":
                    rows = np.asarray(self.store.new_id, dtype=np.int64)
                else:
                    return _mapped_tensor(self.store, "features")
            with self._lock:
                return self.tiers.read(rows)
        if rows is None and self.ids == "original":
            rows = np.asarray(self.store.new_id, dtype=np.int64)
        labels = self.store.labels
        y = np.array(labels if rows is None else labels[rows], dtype=np.int64)  # owned copy
        return torch.from_numpy(y).to(self.device)

    def _multi_get_tensor(self, attrs: list[TensorAttr]) -> list[torch.Tensor | None]:
        return [self._get_tensor(a) for a in attrs]

    def _put_tensor(self, tensor: Any, attr: TensorAttr) -> bool:
        raise PygAdapterError(
            "a store's feature store is read-only; write features with refresh-convert"
        )

    def _remove_tensor(self, attr: TensorAttr) -> bool:
        raise PygAdapterError("a store's feature store is read-only")

    def _get_tensor_size(self, attr: TensorAttr) -> tuple[int, ...] | None:
        if attr.group_name is not None:
            return None
        n = self.store.num_nodes
        if attr.attr_name == "x":
            return (n, self.store.feature_dim)
        if attr.attr_name == "y":
            return (n,)
        return None

    def get_all_tensor_attrs(self) -> list[TensorAttr]:
        return [
            TensorAttr(group_name=None, attr_name="x"),
            TensorAttr(group_name=None, attr_name="y"),
        ]

    def stats(self) -> dict[str, float | int]:
        """Rows and bytes each tier served (``rows_device``, ``bytes_disk``, ...) since the last reset."""
        return self.tiers.stats()

    def reset_stats(self) -> None:
        """Zero the tiers' counters."""
        self.tiers.reset_stats()

    def close(self) -> None:
        """Release the tiers' buffers and files."""
        self.tiers.close()

    def __repr__(self) -> str:
        return (
            f"StoreFeatureStore({str(self.store.path)!r}, ids={self.ids!r}, device={self.device})"
        )


# ----------------------------------------------------------------------------- topology


class StoreGraphStore(GraphStore):
    """Read-only PyG ``GraphStore`` over a store's CSC topology (store ids).

    Parameters
    ----------
    store
        A store folder or an open store.
    index_dtype
        ``None`` (default): ``row`` has the store's dtype (int32 below 2^31
        nodes) and nothing is copied. ``torch.int64``: a copy in RAM, for
        samplers that want int64 (pyg-lib's and torch-sparse's).
    """

    def __init__(
        self, store: str | os.PathLike[str] | Store, *, index_dtype: torch.dtype | None = None
    ) -> None:
        super().__init__()
        self.store = _open(store)
        self.index_dtype = index_dtype

    @functools.cached_property
    def _csc(self) -> tuple[torch.Tensor, torch.Tensor]:
        row = _mapped_tensor(self.store, "indices")
        colptr = _mapped_tensor(self.store, "indptr")
        if self.index_dtype is not None:
            row, colptr = row.to(self.index_dtype), colptr.to(self.index_dtype)
        return row, colptr

    def _attr(self) -> EdgeAttr:
        n = self.store.num_nodes
        return EdgeAttr(edge_type=None, layout="csc", is_sorted=True, size=(n, n))

    def _get_edge_index(self, edge_attr: EdgeAttr) -> tuple[torch.Tensor, torch.Tensor] | None:
        if edge_attr.edge_type is not None or edge_attr.layout.value != "csc":
            return None  # other layouts: GraphStore.coo()/csr() convert from this one
        return self._csc

    def _put_edge_index(self, edge_index: Any, edge_attr: EdgeAttr) -> bool:
        raise PygAdapterError("a store's graph store is read-only; convert a new store instead")

    def _remove_edge_index(self, edge_attr: EdgeAttr) -> bool:
        raise PygAdapterError("a store's graph store is read-only")

    def get_all_edge_attrs(self) -> list[EdgeAttr]:
        return [self._attr()]

    def __repr__(self) -> str:
        return f"StoreGraphStore({str(self.store.path)!r}, num_edges={self.store.num_edges})"


# ----------------------------------------------------------------------------- sampler


class StoreNeighborSampler(BaseSampler):
    """The project's Numba neighbour sampler as a PyG ``BaseSampler``.

    Parameters
    ----------
    store
        A store folder or an open store.
    num_neighbors
        Fanouts from the seeds outward (``-1`` = all neighbours).
    ids
        Id space of the input nodes and of ``n_id`` (module docstring).
    seed
        Base seed: batch ``k`` drawn by a process uses ``derive_seed(seed,
        worker + 1, k)``, so a run is reproducible for a seed (with
        ``shuffle=True`` seed ``torch`` too, it orders the batches).
    num_threads
        Threads of the Numba sampler.
    in_memory
        Copy the topology into RAM (``"auto"``: when it takes at most a
        quarter of the available memory), else sample the memory map.
    """

    def __init__(
        self,
        store: str | os.PathLike[str] | Store,
        num_neighbors: Sequence[int],
        *,
        ids: str = "store",
        seed: int = 0,
        num_threads: int = 1,
        in_memory: bool | str = "auto",
    ) -> None:
        if isinstance(num_neighbors, dict):
            raise PygAdapterError(
                "num_neighbors must be a list of fanouts: a store holds one node and edge type"
            )
        st = _open(store)
        self.store = st
        self.id_space = _IdSpace(st, ids)
        try:
            self.sampler = NeighborSampler(
                st.indptr,
                st.indices,
                list(num_neighbors),
                seed=seed,
                num_threads=num_threads,
                in_memory=in_memory,
            )
        except ValueError as exc:
            raise PygAdapterError(f"num_neighbors={list(num_neighbors)!r}: {exc}") from None
        self.seed = int(seed)
        self._counter = itertools.count()

    @property
    def num_neighbors(self) -> list[int]:
        return list(self.sampler.fanouts)

    def _batch_seed(self) -> int:
        info = torch.utils.data.get_worker_info()
        return derive_seed(self.seed, (info.id + 1) if info is not None else 0, next(self._counter))

    def sample_from_nodes(self, inputs: NodeSamplerInput, **kwargs: Any) -> SamplerOutput:
        seeds = self.id_space.to_store(inputs.node, "input nodes")
        mb = self.sampler.sample(seeds, self._batch_seed())
        node, row, col, n_nodes, n_edges = _flatten(mb)
        return SamplerOutput(
            node=self.id_space.from_store(node),
            row=row,
            col=col,
            edge=None,
            batch=None,
            num_sampled_nodes=n_nodes,
            num_sampled_edges=n_edges,
            metadata=(inputs.input_id, inputs.time),
        )

    def sample_from_edges(self, index: Any, neg_sampling: Any = None) -> Any:
        raise NotImplementedError("the store sampler samples from nodes only (NodeLoader)")

    @property
    def edge_permutation(self) -> None:
        return None


def _flatten(mb: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int], list[int]]:
    """One PyG subgraph from the sampler's per-layer blocks.

    The blocks re-sample every destination at every layer; PyG's subgraph
    expands each node once, at the hop that first reached it. Block ``L-h``
    (hop ``h``) keeps the edges into the nodes new at hop ``h-1`` (local ids
    ``[lo, hi)``: the sources of block ``L-h+1`` beyond its destinations);
    local ids of every block index the same node list (``layer_nodes[0]``,
    whose prefixes are the later layers' sources). Nodes that only the
    dropped edges reached are removed, keeping the order.
    """
    blocks, nodes = mb.blocks, mb.input_nodes
    used = torch.zeros(int(nodes.shape[0]), dtype=torch.bool)
    lo, hi = 0, int(mb.seeds.shape[0])
    used[:hi] = True
    bounds = [hi]  # end of each hop's segment of `nodes`
    rows, cols = [], []
    for layer in range(len(blocks) - 1, -1, -1):
        ei = blocks[layer].edge_index
        # Into a node new at the previous hop and kept: a node that only
        # dropped edges reached is not expanded either.
        keep = (ei[1] >= lo) & (ei[1] < hi)
        keep &= used[ei[1]]
        rows.append(ei[0][keep])
        cols.append(ei[1][keep])
        used[rows[-1]] = True  # sources lie in this hop's segment or earlier ones
        lo, hi = hi, int(blocks[layer].num_src)
        bounds.append(hi)
    new_local = torch.cumsum(used, 0) - 1
    row = [new_local[r] for r in rows]
    col = [new_local[c] for c in cols]
    counts = [int(used[a:b].sum()) for a, b in zip([0, *bounds[:-1]], bounds)]
    empty = torch.empty(0, dtype=torch.long)
    return (
        nodes[used],
        torch.cat(row) if row else empty,
        torch.cat(col) if col else empty,
        counts,
        [int(r.shape[0]) for r in row],
    )


# ----------------------------------------------------------------------------- entry point


def open_pyg(
    store: str | os.PathLike[str] | Store,
    num_neighbors: Sequence[int],
    *,
    ids: str = "store",
    device: torch.device | str = "cpu",
    cache_budget_bytes: int = 0,
    host_budget_bytes: int = 0,
    host_policy: str = "clock",
    io: IOConfig | None = None,
    seed: int = 0,
    num_threads: int = 1,
) -> tuple[StoreFeatureStore, StoreGraphStore, StoreNeighborSampler]:
    """Feature store, graph store and sampler of a store, for PyG's ``NodeLoader``.

    Parameters
    ----------
    store
        A store folder or an open store.
    num_neighbors
        Fanouts from the seeds outward, e.g. ``[10, 5]``.
    ids
        ``"store"`` (default) or ``"original"``: id space of ``input_nodes``,
        ``n_id`` and the feature store's indices. The graph store is always
        in store ids.
    device, cache_budget_bytes, host_budget_bytes, host_policy, io
        The feature tiers (:class:`StoreFeatureStore`). Budgets 0 (default):
        every row from disk through the I/O scheduler.
    seed, num_threads
        The sampler (:class:`StoreNeighborSampler`).

    Returns
    -------
    (StoreFeatureStore, StoreGraphStore, StoreNeighborSampler)

    Raises
    ------
    PygAdapterError
        An unknown id space, a store whose permutation does not match its
        nodes (with ``ids="original"``), bad fanouts or budgets.
    StoreFormatError
        ``store`` is not a complete store.
    """
    st = _open(store)
    fs = StoreFeatureStore(
        st,
        ids=ids,
        device=device,
        cache_budget_bytes=cache_budget_bytes,
        host_budget_bytes=host_budget_bytes,
        host_policy=host_policy,
        io=io,
    )
    try:
        sampler = StoreNeighborSampler(
            st, num_neighbors, ids=ids, seed=seed, num_threads=num_threads
        )
    except BaseException:
        fs.close()
        raise
    return fs, StoreGraphStore(st), sampler


# ----------------------------------------------------------------------------- NodeLoader input


def _accept_array_input_nodes() -> None:
    """Let ``NodeLoader`` take numpy/zarr ``input_nodes`` for a pair with our feature store."""
    from torch_geometric.loader import node_loader

    original = node_loader.get_input_nodes
    if getattr(original, "_refresh_wrapped", False):
        return

    @functools.wraps(original)
    def get_input_nodes(data: Any, input_nodes: Any, input_id: Any = None) -> Any:
        if (
            isinstance(data, (tuple, list))
            and len(data) == 2
            and isinstance(data[0], StoreFeatureStore)
            and input_nodes is not None
            and not isinstance(input_nodes, (torch.Tensor, str, list, tuple))
        ):
            input_nodes = torch.from_numpy(np.array(_as_ids(input_nodes, "input_nodes")))
        return original(data, input_nodes, input_id)

    get_input_nodes._refresh_wrapped = True  # type: ignore[attr-defined]
    node_loader.get_input_nodes = get_input_nodes


_accept_array_input_nodes()
