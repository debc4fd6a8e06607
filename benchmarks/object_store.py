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

Sharded state through DCP's own fsspec writer is not compared: sharded saves on object
storage are not implemented yet (see docs/architecture.md).
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--server", choices=("moto", "weed"), default="moto")
    args = parser.parse_args()
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
