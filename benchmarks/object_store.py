"""Benchmark 7: checkpoints on an S3-compatible store, against the client's plain transfer.

Starts a local S3 server on 127.0.0.1 (moto's server mode, or SeaweedFS with ``--server
weed``), then for a state of ``--mb`` megabytes (one float32 tensor, random) measures in the
same process, best of ``--repeats``:

* plain upload: boto3's ``upload_fileobj`` of the same bytes (its transfer manager, parallel
  parts), the same client configuration ckptlab uses;
* ckptlab save: ``CheckpointManager("s3://...").save`` - data objects (parallel parts),
  SHA-256 while uploading, the create-only commit, the ``latest`` CAS, the decision log;
* plain download: ``get_object`` + ``read()`` of the same object;
* plain download + one SHA-256 pass over the bytes (the goal's yardstick);
* ckptlab restore: ``restore()`` - listing, manifest, every object hashed while it
  downloads, decoded into the component.

Goals (issue 29): save <= 1.2x plain upload; restore <= 1.2x (plain download + one hash).

    python benchmarks/object_store.py [--mb 10 100] [--repeats 3] [--server moto|weed]

``--sharded`` compares, instead, sharded state on 2 ranks (gloo, spawned on this machine): a
replicated model of ``--mb`` MB (DCP deduplicates it: each rank writes about half) plus 1 MB
of per-rank state, against DCP's own fsspec writer to the same server:

* DCP + fsspec: ``dcp.save`` / ``dcp.load`` of the model through
  ``torch.distributed.checkpoint``'s ``FsspecWriter`` / ``FsspecReader`` on s3fs;
* ckptlab: ``ShardedCheckpointer("s3://...").save`` (each rank's part and DCP data object
  uploaded and hashed, the create-only commit by rank 0, ``latest``, the decision log) and
  ``load_dcp`` + ``read_rank_part`` (every object hashed as it downloads).

Every s3fs release since 0.5 needs aiobotocore, whose every release pins botocore below the
1.44.18 that requirements.txt pins (benchmarks/README.md, section 7): pip resolves s3fs only to
0.4.2 (2019, on boto3). Install it apart from the environment and point ``--fsspec-path`` at
it; without it the DCP + fsspec rows are skipped with that reason:

    pip install --target /tmp/s3fs-0.4.2 --no-deps s3fs==0.4.2
    python benchmarks/object_store.py --sharded --mb 100 --repeats 2 --fsspec-path /tmp/s3fs-0.4.2
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import s3_support  # noqa: E402
import torch  # noqa: E402

from ckptlab import CheckpointManager  # noqa: E402


class Blob:
    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor

    def state_dict(self):
        return {"tensor": self.tensor}

    def load_state_dict(self, state):
        self.tensor = state["tensor"]


def best(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(endpoint: str, mb: int, repeats: int) -> dict[str, float]:
    bucket = s3_support.new_bucket(endpoint)
    tensor = torch.randn(mb * 1024 * 1024 // 4, generator=torch.Generator().manual_seed(0))
    data = tensor.numpy().tobytes()
    manager = CheckpointManager(f"s3://{bucket}/run")
    client = manager.directory.store.client  # the very client (and configuration) ckptlab uses
    manager.register("blob", Blob(tensor))
    step = iter(range(1, 1000))
    results = {
        "plain upload": best(lambda: client.upload_fileobj(io.BytesIO(data), bucket, "plain"),
                             repeats),
        "ckptlab save": best(lambda: manager.save(next(step)), repeats),
    }

    def download():
        return client.get_object(Bucket=bucket, Key="plain")["Body"].read()

    results["plain download"] = best(download, repeats)
    results["plain download + sha256"] = best(lambda: hashlib.sha256(download()).hexdigest(),
                                              repeats)
    manager.close()
    reader = CheckpointManager(f"s3://{bucket}/run", create=False)
    reader.register("blob", Blob(torch.empty(0)))
    results["ckptlab restore"] = best(reader.restore, repeats)
    assert torch.equal(reader.components["blob"].tensor, tensor)
    return results


# -- sharded state on 2 ranks: ckptlab vs DCP's FsspecWriter ---------------------------------

def _sharded_state(mb: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    per = mb * 1_000_000 // 4 // 8  # eight float32 tensors
    return {f"layer{i}.weight": torch.randn(per, generator=gen) for i in range(8)}


def _sharded_worker(rank: int, world: int, port: int, endpoint: str, bucket: str, mb: int,
                    repeats: int, fsspec_path: str | None, results: dict) -> None:
    import numpy as np
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    from ckptlab.engine.distributed import ShardedCheckpointer

    os.environ.update(s3_support.environment(endpoint), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model = _sharded_state(mb)
    own = {"buffer": {"obs": np.random.default_rng(rank).random((65_536, 4), np.float32)}}

    def best_of(function) -> float:
        times = []
        for _ in range(repeats):
            dist.barrier()
            start = time.perf_counter()
            function()
            dist.barrier()
            times.append(time.perf_counter() - start)
        return min(times)

    timings: dict[str, float | str] = {}
    target = {"model": {k: torch.empty_like(v) for k, v in model.items()}}
    if fsspec_path is not None:
        sys.path.insert(0, fsspec_path)
    try:
        import s3fs  # noqa: F401
        from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader, FsspecWriter
    except ImportError as exc:
        timings["skipped"] = f"no s3fs ({exc}): see --fsspec-path"
    else:
        options = {"client_kwargs": {"endpoint_url": endpoint}}
        counter = iter(range(10_000))

        def plain_save() -> None:
            dcp.save({"model": model}, process_group=None, storage_writer=FsspecWriter(
                f"s3://{bucket}/dcp{next(counter)}", **options))

        timings["DCP + fsspec save"] = best_of(plain_save)
        timings["DCP + fsspec load"] = best_of(lambda: dcp.load(
            target, storage_reader=FsspecReader(f"s3://{bucket}/dcp0", **options)))
    checkpointer = ShardedCheckpointer(f"s3://{bucket}/run/checkpoints", keep_last=2)
    step = iter(range(1, 10_000))
    timings["ckptlab save"] = best_of(lambda: checkpointer.save(
        next(step), dcp_state={"model": model}, rank_states=own))
    info = checkpointer.agree_on_checkpoint(lambda: checkpointer.manager.latest_valid())

    def sharded_load() -> None:
        checkpointer.load_dcp(info, target)
        checkpointer.read_rank_part(info, rank)

    timings["ckptlab load"] = best_of(sharded_load)
    assert all(torch.equal(target["model"][k], v) for k, v in model.items())
    checkpointer.close()
    dist.destroy_process_group()
    if rank == 0:
        results.update(timings)


def sharded(args: argparse.Namespace) -> None:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = s3_support.moto_server if args.server == "moto" else s3_support.weed_server
    manager = mp.Manager()
    for mb in args.mb:
        results = manager.dict()
        with server() as endpoint:
            bucket = s3_support.new_bucket(endpoint)
            mp.spawn(_sharded_worker, args=(2, port, endpoint, bucket, mb, args.repeats,
                                            args.fsspec_path, results), nprocs=2, join=True)
        r = dict(results)
        print(f"server: {args.server}; 2 ranks, {mb} MB replicated model + 1 MB per rank; "
              f"best of {args.repeats}")
        for name in ("DCP + fsspec save", "ckptlab save", "DCP + fsspec load", "ckptlab load"):
            if name in r:
                print(f"{mb:4d} MB  {name:20s} {r[name] * 1000:8.0f} ms")
        if "skipped" in r:
            print(f"{mb:4d} MB  DCP + fsspec: skipped - {r['skipped']}")
        else:
            print(f"{mb:4d} MB  ckptlab / DCP + fsspec: save "
                  f"{r['ckptlab save'] / r['DCP + fsspec save']:.2f}x, load "
                  f"{r['ckptlab load'] / r['DCP + fsspec load']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--server", choices=("moto", "weed"), default="moto")
    parser.add_argument("--sharded", action="store_true",
                        help="2 ranks: ckptlab's sharded save vs DCP's FsspecWriter (s3fs)")
    parser.add_argument("--fsspec-path", help="a folder holding s3fs (see the docstring)")
    args = parser.parse_args()
    if args.sharded:
        sharded(args)
        return
    server = s3_support.moto_server if args.server == "moto" else s3_support.weed_server
    with server() as endpoint:
        os.environ.update(s3_support.environment(endpoint))
        print(f"server: {args.server} on {endpoint}; best of {args.repeats}; "
              f"torch threads {torch.get_num_threads()}")
        for mb in args.mb:
            r = measure(endpoint, mb, args.repeats)
            for name, seconds in r.items():
                print(f"{mb:4d} MB  {name:26s} {seconds * 1000:8.0f} ms  "
                      f"{mb / seconds:7.0f} MB/s")
            print(f"{mb:4d} MB  save / plain upload: {r['ckptlab save'] / r['plain upload']:.2f}x"
                  f" (goal <= 1.2x); restore / (plain download + sha256): "
                  f"{r['ckptlab restore'] / r['plain download + sha256']:.2f}x (goal <= 1.2x)")


if __name__ == "__main__":
    main()
