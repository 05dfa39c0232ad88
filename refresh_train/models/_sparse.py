"""Aggregation over a block as a sparse product, and float32 projection of float16 rows.

PyG's edge-wise message passing gathers ``x[src]`` into an ``[E, D]`` tensor
before scattering it into the destinations; on MAG240M-width inputs (768
columns) the first layer's copies dominated a batch's memory. Here a layer
aggregates with ``torch.sparse.mm`` over the block's adjacency, a CSR matrix of
shape ``[num_dst, num_src]`` that holds the normalised edge weights, so nothing
per edge is wider than a scalar per attention head.

The adjacency is built once per block and kept on the block object (private
attribute :data:`_CACHE_ATTR`; a copy made by ``Block.to`` or
``dataclasses.replace`` starts without it): every call on the same block
reuses it. Its column indices are sorted and distinct within each row, as
torch's CSR invariants ask; a repeated edge (a multigraph's parallel edges, or
an edge that is also the GCN self-loop) becomes one entry whose weight is the
sum of its copies' weights, so the product equals the edge-wise sum exactly.
Measured once on 2 shared cores: building it for a MAG240M-like block of 640K
edges took about 0.25 s; on a 250K-edge block a CSR with sorted, merged
columns ran forward plus backward 1.3-1.9x faster than COO or than a CSR in
the raw edge order.

Low-precision inputs (float16 feature stores) are never copied whole to
float32: :func:`linear` casts row chunks inside the product and
:func:`aggregate_linear` the source rows of a chunk of destinations, each at
most :data:`CAST_CHUNK_BYTES`; the latter never holds the whole
``[num_dst, d_in]`` aggregate either.
"""

from __future__ import annotations

import bisect
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from refresh_train.batch import Block

__all__ = [
    "CAST_CHUNK_BYTES",
    "aggregate_linear",
    "attention_spmm",
    "block_adjacency",
    "linear",
    "project_first",
    "project_linear",
]

CAST_CHUNK_BYTES = 32 << 20  # 32 MiB: float32 bytes of one cast chunk of a low-precision input
"""Bound on the float32 copy :func:`linear` and :func:`aggregate_linear` make of
a low-precision input at a time."""

_CACHE_ATTR = "_sparse_cache"

# torch warns once per process that CSR support is "beta"; the operations used
# here (CSR @ dense, sampled_addmm) are checked against edge-wise message
# passing by tests/refresh_train/models/test_models_sparse.py.
warnings.filterwarnings(
    "ignore", message="Sparse CSR tensor support is in beta", category=UserWarning
)

ADJACENCY_KINDS = ("mean", "sum", "gcn-mean", "gcn-sym")


@dataclass
class _Structure:
    """Sparsity pattern of one block (optionally with the destinations' self-loops).

    ``crow``/``col`` are the CSR of the distinct (destination, source) pairs,
    columns sorted within each row; ``entry[k]`` is the CSR slot of the
    ``k``-th input pair (the block's edges, then the self-loops if any).
    """

    num_dst: int
    num_src: int
    crow: Tensor  # int64 [num_dst + 1]
    col: Tensor  # int64 [nnz]
    entry: Tensor  # int64 [E (+ num_dst)]
    _transpose: tuple[Tensor, Tensor, Tensor] | None = field(default=None, repr=False)

    @property
    def nnz(self) -> int:
        return int(self.col.numel())

    def matrix(self, values: Tensor) -> Tensor:
        """The ``[num_dst, num_src]`` CSR tensor with ``values`` (``[nnz]``)."""
        return torch.sparse_csr_tensor(
            self.crow,
            self.col,
            values,
            (self.num_dst, self.num_src),
            check_invariants=False,  # valid by construction; checking costs a pass
        )

    def transposed(self, values: Tensor) -> Tensor:
        """The ``[num_src, num_dst]`` CSR tensor of the transpose with ``values``."""
        if self._transpose is None:
            rows = torch.repeat_interleave(
                torch.arange(self.num_dst, device=self.col.device), self.crow.diff()
            )
            t = _coalesce(self.col, rows, self.num_src, self.num_dst)
            # Entries are distinct, so every transposed slot holds exactly one entry.
            perm = torch.empty_like(t.entry)
            perm[t.entry] = torch.arange(self.nnz, device=self.col.device)
            self._transpose = (t.crow, t.col, perm)
        crow, col, perm = self._transpose
        return torch.sparse_csr_tensor(
            crow, col, values[perm], (self.num_src, self.num_dst), check_invariants=False
        )


def _coalesce(rows: Tensor, cols: Tensor, num_rows: int, num_cols: int) -> _Structure:
    key = rows * num_cols + cols  # < num_rows * num_cols, far below 2**63 for any block
    sorted_key, perm = torch.sort(key)
    uniq, inverse = torch.unique_consecutive(sorted_key, return_inverse=True)
    entry = torch.empty_like(perm)
    entry[perm] = inverse
    row = torch.div(uniq, num_cols, rounding_mode="floor") if num_cols else uniq
    crow = torch.zeros(num_rows + 1, dtype=torch.int64, device=rows.device)
    torch.cumsum(torch.bincount(row, minlength=num_rows), 0, out=crow[1:])
    return _Structure(num_rows, num_cols, crow, uniq - row * num_cols, entry)


def _cache(block: Block) -> dict:
    # Keyed to the edge_index object: a block whose edges are replaced starts afresh.
    cached = block.__dict__.get(_CACHE_ATTR)
    if cached is None or cached[0] is not block.edge_index:
        cached = (block.edge_index, {})
        setattr(block, _CACHE_ATTR, cached)
    return cached[1]


def block_structure(block: Block, *, self_loops: bool = False) -> _Structure:
    """The block's CSR pattern (cached on the block); ``self_loops`` adds ``(i, i)``, ``i < num_dst``."""
    entries = _cache(block)
    key = ("structure", self_loops)
    if key not in entries:
        src, dst = block.edge_index[0], block.edge_index[1]
        if self_loops:
            loop = torch.arange(block.num_dst, device=src.device)
            src, dst = torch.cat([src, loop]), torch.cat([dst, loop])
        entries[key] = _coalesce(dst, src, block.num_dst, block.num_src)
    return entries[key]


def block_adjacency(block: Block, kind: str, *, transpose: bool = False) -> Tensor:
    """Normalised ``[num_dst, num_src]`` float32 CSR adjacency of ``block`` (cached on it).

    Parameters
    ----------
    block : Block
        Its ``edge_index`` defines the edges; repeated edges count with
        multiplicity, as in edge-wise message passing.
    kind : {"mean", "sum", "gcn-mean", "gcn-sym"}
        ``"mean"``: weight ``1 / deg(v)`` over the sampled in-edges of ``v``
        (a destination without in-edges gets a zero row). ``"sum"``: weight 1.
        ``"gcn-mean"``/``"gcn-sym"``: self-loop ``(v, v)`` added, weights
        ``1 / deg~(v)`` or ``deg~_src(u)^-1/2 deg~_dst(v)^-1/2`` with degrees
        counted inside the block, self-loop included (see :mod:`.gcn`).
    transpose : bool
        Return the ``[num_src, num_dst]`` transpose instead (as CSR; the
        backward pass of a sparse product needs it).

    Returns
    -------
    torch.Tensor
        A sparse CSR tensor on the block's device.
    """
    entries = _cache(block)
    if (kind, transpose) in entries:
        return entries[kind, transpose]
    if transpose:
        values = block_adjacency(block, kind).values()
        s = block_structure(block, self_loops=kind.startswith("gcn"))
        entries[kind, True] = adj_t = s.transposed(values)
        return adj_t
    if kind not in ADJACENCY_KINDS:
        raise ValueError(f"kind must be one of {ADJACENCY_KINDS!r}; got {kind!r}")
    s = block_structure(block, self_loops=kind.startswith("gcn"))
    src, dst = block.edge_index[0], block.edge_index[1]
    nd, dev = block.num_dst, src.device
    deg_dst = torch.bincount(dst, minlength=nd).to(torch.float32)
    if kind == "sum":
        w = torch.ones(dst.numel(), device=dev)
    elif kind == "mean":
        w = deg_dst.clamp(min=1.0).reciprocal()[dst]
    else:
        loop = torch.arange(nd, device=dev)
        src, dst = torch.cat([src, loop]), torch.cat([dst, loop])
        deg_dst = deg_dst + 1.0
        if kind == "gcn-mean":
            w = deg_dst.reciprocal()[dst]
        else:
            deg_src = torch.bincount(src, minlength=block.num_src).to(torch.float32)
            w = (deg_src[src] * deg_dst[dst]).rsqrt()
    values = torch.zeros(s.nnz, device=dev).index_add_(0, s.entry, w)
    entries[kind, False] = adj = s.matrix(values)
    return adj


def _chunk_len(width: int, dtype: torch.dtype) -> int:
    # Rows of `width` columns of `dtype` in one cast chunk.
    return max(1, CAST_CHUNK_BYTES // (max(1, width) * dtype.itemsize))


class _CastLinear(torch.autograd.Function):
    """``x @ weight.T + bias`` for a low-precision ``x``, cast in row chunks.

    Saves ``x`` itself (not a float32 copy) for the weight's gradient, which is
    accumulated chunk by chunk in the backward pass. The chunks are cast into
    one reused buffer: a fresh allocation per chunk costs page faults that
    showed up as a large share of the cast's time.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        out = torch.empty((x.shape[0], weight.shape[0]), dtype=weight.dtype, device=x.device)
        for lo, hi, rows in _cast_row_chunks(x, weight.dtype):
            if bias is None:
                torch.mm(rows, weight.t(), out=out[lo:hi])
            else:
                torch.addmm(bias, rows, weight.t(), out=out[lo:hi])
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = (grad @ weight).to(x.dtype)
        if ctx.needs_input_grad[1]:
            gw = torch.zeros_like(weight)
            for lo, hi, rows in _cast_row_chunks(x, weight.dtype):
                gw.addmm_(grad[lo:hi].t(), rows)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = grad.sum(0)
        return gx, gw, gb


def _cast_row_chunks(x: Tensor, dtype: torch.dtype):
    """``(lo, hi, x[lo:hi] as dtype)`` for chunks of at most CAST_CHUNK_BYTES, in one buffer."""
    step = _chunk_len(x.shape[1], dtype)
    buf = torch.empty((min(step, x.shape[0]), x.shape[1]), dtype=dtype, device=x.device)
    for lo in range(0, x.shape[0], step):
        hi = min(lo + step, x.shape[0])
        rows = buf[: hi - lo]
        rows.copy_(x[lo:hi])
        yield lo, hi, rows


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear`` in ``weight``'s dtype for an input of any floating dtype.

    A float16 (or bfloat16) ``x`` is cast in chunks of at most
    :data:`CAST_CHUNK_BYTES`, never whole.
    """
    if x.dtype == weight.dtype:
        return F.linear(x, weight, bias)
    return _CastLinear.apply(x, weight, bias)


@dataclass
class _RowChunk:
    """Destination rows ``lo:hi`` of a block's CSR and the distinct sources they read."""

    lo: int
    hi: int
    entries: slice  # their CSR entries
    src: Tensor  # int64 [k]: distinct source rows, ascending
    crow: Tensor  # int64 [hi - lo + 1], from 0
    col: Tensor  # int64 [entries]: positions in src


def _row_chunks(block: Block, self_loops: bool, rows: int) -> list[_RowChunk]:
    """Split the block's destinations into runs of at most ``rows`` rows and entries (cached)."""
    entries = _cache(block)
    key = ("chunks", self_loops, rows)
    if key not in entries:
        s = block_structure(block, self_loops=self_loops)
        crow = s.crow.tolist()
        chunks, lo = [], 0
        while lo < s.num_dst:
            # The last row whose entries still fit; a row wider than `rows` goes alone.
            hi = bisect.bisect_right(crow, crow[lo] + rows, lo + 1, min(lo + rows, s.num_dst) + 1)
            hi = max(hi - 1, lo + 1)
            e = slice(crow[lo], crow[hi])
            src, col = torch.unique(s.col[e], return_inverse=True)
            chunks.append(_RowChunk(lo, hi, e, src, s.crow[lo : hi + 1] - crow[lo], col))
            lo = hi
        entries[key] = chunks
    return entries[key]


def _chunk_aggregates(chunks: list[_RowChunk], values: Tensor, x: Tensor):
    """``(c, (A @ x)[c.lo:c.hi])`` per chunk, in ``values``' dtype, in reused buffers.

    The returned aggregate is overwritten by the next chunk.
    """
    if not chunks:
        return
    width, dev = x.shape[1], x.device
    k_max = max(c.src.numel() for c in chunks)
    gathered = torch.empty((k_max, width), dtype=x.dtype, device=dev)
    cast = torch.empty((k_max, width), dtype=values.dtype, device=dev)
    agg = torch.empty((max(c.hi - c.lo for c in chunks), width), dtype=values.dtype, device=dev)
    for c in chunks:
        k, r = c.src.numel(), c.hi - c.lo
        torch.index_select(x, 0, c.src, out=gathered[:k])
        cast[:k].copy_(gathered[:k])
        a = torch.sparse_csr_tensor(
            c.crow, c.col, values[c.entries], (r, k), check_invariants=False
        )
        # beta=0: the buffer's stale contents are ignored, not scaled.
        torch.addmm(agg[:r], a, cast[:k], beta=0.0, out=agg[:r])
        yield c, agg[:r]


class _ChunkedAggregateLinear(torch.autograd.Function):
    """``(A @ x) @ weight.T + bias`` for a low-precision ``x``, by chunks of destinations.

    Each chunk gathers the distinct source rows its destinations read, casts
    them, sums them over its edges and applies the linear layer, so neither a
    float32 copy of ``x`` nor the ``[num_dst, d_in]`` float32 aggregate ever
    exists; the backward pass recomputes each chunk's aggregate for the
    weight's gradient. Gathering per chunk also keeps the product's random row
    reads inside a cache-sized block.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, block, kind):
        values = block_adjacency(block, kind).values()
        chunks = _row_chunks(block, kind.startswith("gcn"), _chunk_len(x.shape[1], weight.dtype))
        out = torch.empty((block.num_dst, weight.shape[0]), dtype=weight.dtype, device=x.device)
        for c, agg in _chunk_aggregates(chunks, values, x):
            if bias is None:
                torch.mm(agg, weight.t(), out=out[c.lo : c.hi])
            else:
                torch.addmm(bias, agg, weight.t(), out=out[c.lo : c.hi])
        ctx.save_for_backward(x, weight)
        ctx.block, ctx.kind, ctx.has_bias = block, kind, bias is not None
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        block, kind = ctx.block, ctx.kind
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            adj_t = block_adjacency(block, kind, transpose=True)
            gx = torch.sparse.mm(adj_t, grad @ weight).to(x.dtype)
        if ctx.needs_input_grad[1]:
            values = block_adjacency(block, kind).values()
            chunks = _row_chunks(
                block, kind.startswith("gcn"), _chunk_len(x.shape[1], weight.dtype)
            )
            gw = torch.zeros_like(weight)
            for c, agg in _chunk_aggregates(chunks, values, x):
                gw.addmm_(grad[c.lo : c.hi].t(), agg)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = grad.sum(0)
        return gx, gw, gb, None, None


def aggregate_linear(
    block: Block, kind: str, x: Tensor, weight: Tensor, bias: Tensor | None = None
) -> Tensor:
    """``F.linear(A @ x, weight, bias)`` with ``A = block_adjacency(block, kind)``.

    A float32 ``x`` goes through one sparse product (autograd keeps the
    ``[num_dst, d_in]`` aggregate for the weight's gradient). A float16 ``x``
    goes by chunks of destinations that read at most
    :data:`CAST_CHUNK_BYTES` of float32 rows each, and nothing of
    ``[num_dst, d_in]`` is kept (:class:`_ChunkedAggregateLinear`).
    """
    if x.dtype == weight.dtype:
        return F.linear(torch.sparse.mm(block_adjacency(block, kind), x), weight, bias)
    return _ChunkedAggregateLinear.apply(x, weight, bias, block, kind)


def project_linear(
    block: Block, kind: str, x: Tensor, weight: Tensor, bias: Tensor | None = None
) -> Tensor:
    """``A @ F.linear(x, weight) + bias``: the same value, projecting all sources first."""
    out = torch.sparse.mm(block_adjacency(block, kind), linear(x, weight))
    return out if bias is None else out + bias


def project_first(num_src: int, num_dst: int, num_edges: int, d_in: int, d_out: int) -> bool:
    """Whether ``A (x W^T)`` takes fewer multiply-adds than ``(A x) W^T``.

    Projecting first multiplies all ``num_src`` rows by ``W``; aggregating first
    multiplies only the ``num_dst`` aggregated rows but sums ``d_in``-wide rows
    per edge. It pays only when a layer narrows (``d_in > d_out``) and the
    block has few sources per destination (e.g. whole-graph blocks): on sampled
    blocks ``num_src`` is several times ``num_dst`` and aggregating first wins.
    """
    return num_src * d_in * d_out + num_edges * d_out < num_dst * d_in * d_out + num_edges * d_in


class _AttentionSpmm(torch.autograd.Function):
    """``out[:, h] = A_h @ x[:, h]`` where ``A_h`` has the pattern ``s`` and values ``values[:, h]``.

    The gradient of the values is a sampled dense product (SDDMM,
    ``torch.sparse.sampled_addmm``): one scalar per entry and head, never a
    per-edge row.
    """

    @staticmethod
    def forward(ctx, values: Tensor, x: Tensor, s: _Structure) -> Tensor:
        heads = values.shape[1]
        out = x.new_empty((s.num_dst, heads, x.shape[2]))
        for h in range(heads):
            out[:, h] = torch.sparse.mm(s.matrix(values[:, h].contiguous()), x[:, h].contiguous())
        ctx.save_for_backward(values, x)
        ctx.structure = s
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        values, x = ctx.saved_tensors
        s: _Structure = ctx.structure
        gv = gx = None
        if ctx.needs_input_grad[0]:
            gv = torch.empty_like(values)
            pattern = s.matrix(torch.zeros(s.nnz, dtype=values.dtype, device=values.device))
        if ctx.needs_input_grad[1]:
            gx = torch.empty_like(x)
        for h in range(values.shape[1]):
            g = grad[:, h].contiguous()
            if gv is not None:
                sampled = torch.sparse.sampled_addmm(pattern, g, x[:, h].t(), beta=0.0)
                gv[:, h] = sampled.values()
            if gx is not None:
                gx[:, h] = torch.sparse.mm(s.transposed(values[:, h].contiguous()), g)
        return gv, gx, None


def attention_spmm(block: Block, alpha: Tensor, x: Tensor) -> Tensor:
    """Attention-weighted sum ``out[v, h] = sum_{(u, v) in E} alpha[e, h] x[u, h]``.

    Parameters
    ----------
    block : Block
        ``alpha`` row ``e`` belongs to ``block.edge_index[:, e]``.
    alpha : torch.Tensor
        ``[E, H]`` attention coefficients (autograd flows to them).
    x : torch.Tensor
        ``[num_src, H, C]`` projected source rows.

    Returns
    -------
    torch.Tensor
        ``[num_dst, H, C]``.
    """
    s = block_structure(block)
    # Parallel edges share one CSR slot: their coefficients add up.
    values = alpha.new_zeros((s.nnz, alpha.shape[1])).index_add(0, s.entry, alpha)
    return _AttentionSpmm.apply(values, x, s)
