"""Train PyG's own GraphSAGE from a ReFresh store with PyG's NodeLoader.

The store is served through :mod:`refresh_train.pyg`: features are gathered by
the I/O scheduler through the raw-feature tiers (optionally a device cache of
the hottest rows and a host buffer), the topology is the store's memory-mapped
CSC, and neighbours are drawn by the project's Numba sampler, so neither
pyg-lib nor torch-sparse is needed. The model and the training loop are plain
PyTorch Geometric.

    python examples/pyg_graphsage.py --store demo_data/store --epochs 2
    python examples/pyg_graphsage.py --store demo_data/store --cache-budget 8MiB --host-budget 16MiB
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
import zarr
from torch_geometric.loader import NodeLoader
from torch_geometric.nn import GraphSAGE

from refresh_train.metrics import format_bytes
from refresh_train.pyg import open_pyg


def _size(text: str) -> int:
    from refresh_train.config import parse_size

    return parse_size(text) if text not in ("0", "") else 0


def _evaluate(model, loader) -> float:
    model.eval()
    right = total = 0
    with torch.no_grad():
        for batch in loader:
            pred = model(batch.x.float(), batch.edge_index)[: batch.batch_size].argmax(-1)
            y = batch.y[: batch.batch_size]
            right += int((pred == y).sum())
            total += int((y >= 0).sum())
    return right / max(total, 1)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--store", required=True, help="a store made by refresh-convert")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--fanouts", default="10,5", help="neighbours per hop from the seeds outward")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.003)
    p.add_argument("--cache-budget", default="0", help="device tier bytes, e.g. 8MiB (0 = none)")
    p.add_argument("--host-budget", default="0", help="host tier bytes, e.g. 16MiB (0 = none)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)
    fanouts = [int(f) for f in args.fanouts.split(",")]
    feature_store, graph_store, sampler = open_pyg(
        args.store,
        num_neighbors=fanouts,
        device=args.device,
        cache_budget_bytes=_size(args.cache_budget),
        host_budget_bytes=_size(args.host_budget),
        seed=args.seed,
    )
    # The splits as any zarr reader sees them (store ids, the adapter's default).
    group = zarr.open_group(args.store, mode="r")
    train_idx, test_idx = group["train_idx"][:], group["test_idx"][:]
    store = feature_store.store

    def loader(nodes, shuffle: bool) -> NodeLoader:
        return NodeLoader(
            data=(feature_store, graph_store),
            node_sampler=sampler,
            input_nodes=nodes,
            batch_size=args.batch_size,
            shuffle=shuffle,
        )

    model = GraphSAGE(store.feature_dim, args.hidden, len(fanouts), store.num_classes)
    model = model.to(args.device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    print(f"{store!r}\nfanouts {fanouts}, {len(train_idx)} training nodes, device {args.device}")
    print(f"{'epoch':>5} {'loss':>8} {'time s':>7} {'test acc':>9} {'device':>10} {'host':>10} {'disk':>10}")  # fmt: skip
    for epoch in range(1, args.epochs + 1):
        model.train()
        feature_store.reset_stats()
        start, losses = time.perf_counter(), []
        for batch in loader(train_idx, shuffle=True):
            batch = batch.to(args.device)
            opt.zero_grad()
            out = model(batch.x.float(), batch.edge_index)[: batch.batch_size]
            y = batch.y[: batch.batch_size]
            loss = F.cross_entropy(out[y >= 0], y[y >= 0])  # -1 = unlabelled
            loss.backward()
            opt.step()
            losses.append(loss.item())
        seconds = time.perf_counter() - start
        stats = feature_store.stats()  # training fetches of this epoch, per tier
        acc = _evaluate(model, loader(test_idx, shuffle=False))
        tiers = [format_bytes(stats[f"bytes_{t}"]) for t in ("device", "host", "disk")]
        print(
            f"{epoch:>5d} {sum(losses) / len(losses):>8.4f} {seconds:>7.1f} {100 * acc:>8.2f}% "
            + " ".join(f"{t:>10}" for t in tiers)
        )
    feature_store.close()
    return {"test_acc": acc, "loss": sum(losses) / len(losses), **stats}


if __name__ == "__main__":
    main()
