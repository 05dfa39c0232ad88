"""Model zoo: GNNs over sampled blocks, chosen by name.

>>> model = build_model("sage", in_dim=128, hidden=256, out_dim=172, num_layers=3, dropout=0.5)
>>> logits = model(batch, batch.features)

Every model subclasses :class:`BlockGNN` and shares its interface:
``forward(batch, x, return_hidden=False)``, the per-layer entry point
``forward_layer(layer, block, h)`` (cache injection/capture, layer-wise
inference) and ``dims`` (the width of each ``h^(l)``).

========  =====================================================  ====================
name      layer                                                  extra options
========  =====================================================  ====================
``sage``  PyG ``SAGEConv``, mean aggregation                     ``aggr``, ``project_first``
``gcn``   :class:`BlockGCNConv` (row or symmetric normalisation)  ``aggr_norm``, ``project_first``
``gat``   PyG ``GATConv``, multi-head, bipartite, residual       ``heads``, ``attn_dropout``, ``residual``
``mlp``   ``nn.Linear`` on the seeds only                        —
``rsage`` PyG ``SAGEConv`` per relation + root ``Linear``, summed  ``num_relations``, ``project_first``
``rgat``  PyG ``GATConv`` per relation + root ``Linear``, summed   ``num_relations``, ``heads``, ``attn_dropout``
========  =====================================================  ====================

The relational models (:data:`RELATIONAL_MODELS`) need blocks sampled per
relation from a store with edge types (``Block.edge_type``) and
``num_relations=len(store.relations)``.

Common options: ``dropout``, ``input_dropout``, ``norm`` (``none``/``batch``/``layer``).

Raw features may be passed as float16 or float32 (no cast needed; see
:mod:`refresh_train.models._base`). Neighbours are aggregated by a sparse
product over each block's CSR adjacency, built once per block and cached on
it, with PyG's layers' parameters (state-dict keys unchanged).
"""

from __future__ import annotations

from refresh_train.models._base import NORMS, BlockGNN
from refresh_train.models._sparse import CAST_CHUNK_BYTES, project_first
from refresh_train.models.gat import GAT
from refresh_train.models.gcn import GCN, BlockGCNConv
from refresh_train.models.mlp import MLP
from refresh_train.models.rgat import RGAT
from refresh_train.models.rsage import RGraphSAGE
from refresh_train.models.sage import GraphSAGE

__all__ = [
    "CAST_CHUNK_BYTES",
    "MODELS",
    "NORMS",
    "RELATIONAL_MODELS",
    "BlockGNN",
    "BlockGCNConv",
    "GAT",
    "GCN",
    "GraphSAGE",
    "MLP",
    "RGAT",
    "RGraphSAGE",
    "build_model",
    "model_options",
    "project_first",
    "sampler_options",
]

#: Homogeneous models: any store, edge types (if any) unused.
MODELS: dict[str, type[BlockGNN]] = {"sage": GraphSAGE, "gcn": GCN, "gat": GAT, "mlp": MLP}
#: Relational models: a store with edge types, sampled per relation; they take
#: ``num_relations``.
RELATIONAL_MODELS: dict[str, type[BlockGNN]] = {"rsage": RGraphSAGE, "rgat": RGAT}


def model_options(name: str, store) -> dict:
    """What a model takes from its store: ``num_relations`` for a relational model."""
    return {"num_relations": store.num_relations} if name in RELATIONAL_MODELS else {}


def sampler_options(name: str, store) -> dict:
    """:class:`~refresh_train.sampler.NeighborSampler` keywords the model needs from
    its store: per-relation sampling (``edge_type``, ``num_relations``) for a
    relational model, nothing for a homogeneous one (it samples a typed store
    as if it had no types)."""
    if name not in RELATIONAL_MODELS:
        return {}
    return {"edge_type": store.edge_type, "num_relations": store.num_relations}


def build_model(
    name: str, in_dim: int, hidden: int, out_dim: int, num_layers: int, **opts
) -> BlockGNN:
    """Instantiate the model registered as ``name``.

    Parameters
    ----------
    name : str
        A key of :data:`MODELS` or :data:`RELATIONAL_MODELS`.
    in_dim, hidden, out_dim, num_layers : int
        Raw feature width, hidden width, number of classes, number of layers.
    **opts
        Common and model-specific options (see the table above).

    Raises
    ------
    ValueError
        If ``name`` is not registered or an option is invalid.
    """
    cls = MODELS.get(name) or RELATIONAL_MODELS.get(name)
    if cls is None:
        names = sorted(MODELS) + sorted(RELATIONAL_MODELS)
        raise ValueError(f"model must be one of {names!r}; got {name!r}")
    try:
        return cls(in_dim, hidden, out_dim, num_layers, **opts)
    except TypeError as e:
        raise ValueError(f"invalid options for model {name!r}: {e}") from None
