"""Benchmark 3: ckptlab's save, async save and restore against its peers, 1 MB to 1 GB.

One float32 state (a module of a few large parameters, registered as one component) is saved
and restored through the paths users call - ``CheckpointManager.save()``, ``save_async()``
and ``restore()`` - and, in the same run, paired and interleaved (the order rotates every
repeat), through:

* ``safetensors.torch.save_file`` + fsync, and ``load_file`` + ``load_state_dict``;
* ``torch.save`` + fsync, and ``torch.load(weights_only=True)`` + ``load_state_dict``;
* ``torch.distributed.checkpoint`` (DCP) ``save`` / ``load`` in one process;
* a raw ``write`` + ``fsync`` of the same number of bytes.

Every restore runs in a fresh subprocess (a resume starts a new process), so its peak RSS can be
measured: the peak of resident memory during the restore above what the process held just
before it (the model already allocated), as a multiple of the state's size (``VmHWM`` after
resetting it through ``/proc/self/clear_refs``). Each subprocess first restores a 64 KB state
the same way, so neither the time nor the memory counts a library's first use (its code
paged in, its threads started). *Cold* restores first evict the files from
the page cache (``posix_fadvise(DONTNEED)`` on our own files only, since the machine is
shared); *warm* ones read them from the page cache. torch runs with one thread, the
project's default for training runs (``DQNConfig.num_threads``).

The restore target is ``safetensors load + one SHA-256 pass``: the safetensors restore time
plus the time to hash the same bytes (measured in the same subprocess), since verifying every
byte before it is used is what ckptlab adds on purpose.

With ``--device cuda`` the model being restored lives on the GPU and every method restores
straight to it: ``restore(path, device=...)``, ``load_file(path, device=...)``,
``torch.load(map_location=...)``, DCP into the model's own device tensors. The report then
adds each method's peak *device* memory above the model itself, as a multiple of the state;
peak RSS stays the host's. (``--device cpu``, the default, is the CPU case above.)

    python benchmarks/checkpoint_peers.py [--sizes-mb 1 10 100 1000] [--repeats 5]
                                          [--big-repeats 2] [--device cuda]

Ratios are medians of per-repeat ratios (each pair measured back to back).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks._machine import describe  # noqa: E402

PIECES = 4  # large parameters per state, plus one small one
MB = 1024 * 1024


class Blob(torch.nn.Module):
    """A float32 state of about ``nbytes``: a few large parameters and a small one."""

    def __init__(self, nbytes: int) -> None:
        super().__init__()
        n = max(1, nbytes // 4 // PIECES)
        self.w = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.empty(n)) for _ in range(PIECES)])
        self.bias = torch.nn.Parameter(torch.empty(1000))

    def fill(self, seed: int | None) -> Blob:
        """Random values (the saving side), or zeros that are resident (the loading side)."""
        generator = torch.Generator().manual_seed(seed or 0)
        with torch.no_grad():
            for p in self.parameters():
                p.uniform_(generator=generator) if seed is not None else p.fill_(0.0)
        return self

    def nbytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.parameters())


def _fsync_path(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _evict(path: Path) -> None:
    """Drop a file's (clean, already fsynced) pages from the page cache: a cold read follows."""
    for file in [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]:
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _warm(path: Path) -> None:
    for file in [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]:
        with open(file, "rb", buffering=0) as f:
            while f.read(16 * MB):
                pass


# --- saving (in this process) --------------------------------------------------------------

def save_side(nbytes: int, repeats: int, root: Path) -> tuple[dict[str, list[float]],
                                                               dict[str, Path]]:
    import torch.distributed.checkpoint as dcp
    from safetensors.torch import save_file

    from ckptlab import CheckpointManager

    model = Blob(nbytes).fill(seed=1)
    state = model.state_dict()
    manager = CheckpointManager(root / "ckptlab")
    manager.register("model", model)
    step = 0

    def next_step() -> int:
        nonlocal step
        step += 1
        return step

    def drop_old(keep: Path | None = None) -> None:
        for path in manager.committed():
            if path != keep:
                shutil.rmtree(path)

    def ckptlab_sync() -> float:
        t0 = time.perf_counter()
        manager.save(next_step())
        return time.perf_counter() - t0

    def ckptlab_async(copy: bool) -> tuple[float, float]:
        t0 = time.perf_counter()
        kwargs = {} if copy else {"copy": False}
        manager.save_async(next_step(), **kwargs)
        if not copy:
            manager.wait_staged()  # the caller may change its tensors only after this
        blocked = time.perf_counter() - t0
        manager.wait()
        return blocked, time.perf_counter() - t0

    def ckptlab_async_background() -> tuple[float, float, float, float]:
        """save_async(copy_in_background=True), then what a training loop does next: a
        forward and backward pass (reads the weights, writes only gradients), then
        wait_staged() before the optimizer would change the weights."""
        for p in model.parameters():
            p.grad.zero_()  # kept allocated, as a loop's gradients are between steps
        committed: list[float] = []
        t0 = time.perf_counter()
        future = manager.save_async(next_step(), copy_in_background=True)
        called = time.perf_counter() - t0
        future.add_done_callback(lambda _: committed.append(time.perf_counter()))
        t1 = time.perf_counter()
        forward_backward()
        worked = time.perf_counter() - t1
        t2 = time.perf_counter()
        manager.wait_staged()
        blocked = called + time.perf_counter() - t2
        manager.wait()
        return blocked, called, worked, committed[0] - t0  # when the save committed

    def forward_backward() -> None:
        # The smallest step a model of this size takes: a batch of 4 through each weight
        # (viewed as a matrix of 256 columns), one pass reading the weights, one writing the
        # gradients - memory-bound, like the staging copy it overlaps.
        loss = 0.0
        for weight in model.w:
            rows = weight.numel() // 256
            matrix = weight[:rows * 256].view(rows, 256)
            loss = loss + (inputs @ matrix.T).square().mean()
        loss.backward()

    inputs = torch.randn(4, 256, generator=torch.Generator().manual_seed(2))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)

    def safetensors_save() -> float:
        path = root / "peer.safetensors"
        path.unlink(missing_ok=True)
        t0 = time.perf_counter()
        save_file(state, path)
        _fsync_path(path)
        return time.perf_counter() - t0

    def torch_save() -> float:
        path = root / "peer.pt"
        path.unlink(missing_ok=True)
        t0 = time.perf_counter()
        with open(path, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        return time.perf_counter() - t0

    def dcp_save() -> float:
        path = root / "peer.dcp"
        shutil.rmtree(path, ignore_errors=True)
        t0 = time.perf_counter()
        dcp.save({"model": state}, checkpoint_id=str(path))  # fsyncs its files itself
        return time.perf_counter() - t0

    def raw_write() -> float:
        path = root / "raw.bin"
        path.unlink(missing_ok=True)
        views = [memoryview(p.detach().numpy()).cast("B") for p in model.parameters()]
        t0 = time.perf_counter()
        with open(path, "wb", buffering=0) as f:
            for view in views:
                while view:
                    view = view[f.write(view):]
            os.fsync(f.fileno())
        return time.perf_counter() - t0

    results: dict[str, list[float]] = {k: [] for k in (
        "ckptlab save", "async blocked (copy)", "async total (copy)",
        "async blocked (no copy, until staged)", "async total (no copy)",
        "async blocked (copy in background, forward+backward between)",
        "async call (copy in background)", "forward+backward of a batch of 4",
        "async total (copy in background)",
        "safetensors save+fsync", "torch.save+fsync", "DCP save", "raw write+fsync")}
    has_no_copy = "copy" in manager.save_async.__code__.co_varnames
    # The first async save allocates (and faults in) the staging buffer; later ones reuse it.
    t0 = time.perf_counter()
    manager.save_async(next_step())
    results["first async blocked (copy)"] = [time.perf_counter() - t0]
    manager.wait()
    drop_old()

    def run_async(copy: bool) -> None:
        blocked, total = ckptlab_async(copy)
        suffix = "(copy)" if copy else "(no copy, until staged)"
        results[f"async blocked {suffix}"].append(blocked)
        results["async total (copy)" if copy else "async total (no copy)"].append(total)

    def run_async_background() -> None:
        blocked, called, worked, total = ckptlab_async_background()
        results["async blocked (copy in background, forward+backward between)"].append(blocked)
        results["async call (copy in background)"].append(called)
        results["forward+backward of a batch of 4"].append(worked)
        results["async total (copy in background)"].append(total)

    jobs = [("ckptlab save", ckptlab_sync), ("async", lambda: run_async(True)),
            ("safetensors save+fsync", safetensors_save), ("torch.save+fsync", torch_save),
            ("DCP save", dcp_save), ("raw write+fsync", raw_write)]
    if has_no_copy:
        jobs.insert(2, ("async-nocopy", lambda: run_async(False)))
    if "copy_in_background" in manager.save_async.__code__.co_varnames:
        jobs.insert(2, ("async-background", run_async_background))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DCP warns that no process group is initialised
        for i in range(repeats):
            order = jobs[i % len(jobs):] + jobs[:i % len(jobs)]
            for name, job in order:
                seconds = job()
                if seconds is not None:
                    results[name].append(seconds)
                drop_old()
    manager.save(next_step())  # the checkpoint the restores read
    manager.close()
    files = {"ckptlab": manager.committed()[-1], "safetensors": root / "peer.safetensors",
             "torch": root / "peer.pt", "dcp": root / "peer.dcp"}
    return {k: v for k, v in results.items() if v}, files


# --- restoring (each in a fresh subprocess) -------------------------------------------------

def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field))


def _restorer(method: str, model: torch.nn.Module, path: Path,
              device: torch.device) -> Callable[[], None]:
    """A call that loads the checkpoint at ``path`` into ``model`` (on ``device``) the way
    ``method`` does, its tensors decoded straight onto ``device`` (what needs setting up
    first - ckptlab's manager - is set up here, untimed)."""
    if method == "ckptlab":
        from ckptlab import CheckpointManager
        manager = CheckpointManager(path.parent, create=False)
        manager.register("model", model)
        placement = None if device.type == "cpu" else str(device)
        return lambda: manager.restore(path, device=placement)
    if method == "safetensors":
        from safetensors.torch import load_file
        return lambda: model.load_state_dict(load_file(path, device=str(device)))
    if method == "torch":
        return lambda: model.load_state_dict(torch.load(path, weights_only=True,
                                                        map_location=device))
    import torch.distributed.checkpoint as dcp

    def dcp_restore() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = {"model": model.state_dict()}
            dcp.load(state, checkpoint_id=str(path))
        model.load_state_dict(state["model"])
    return dcp_restore


def _tiny_checkpoint(method: str, root: Path) -> Path:
    """A 64 KB checkpoint written by ``method``, for the warm-up restore."""
    model = Blob(64_000).fill(seed=2)
    if method == "ckptlab":
        from ckptlab import CheckpointManager
        with CheckpointManager(root / "ckptlab") as manager:
            manager.register("model", model)
            return manager.save(1).path
    path = root / f"tiny.{method}"
    if method == "safetensors":
        from safetensors.torch import save_file
        save_file(model.state_dict(), path)
    elif method == "torch":
        torch.save(model.state_dict(), path)
    elif method == "dcp":
        import torch.distributed.checkpoint as dcp
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dcp.save({"model": model.state_dict()}, checkpoint_id=str(path))
    return path


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":  # a restore is done when the device has its bytes
        torch.cuda.synchronize(device)


def child(method: str, path: Path, nbytes: int, device: torch.device) -> None:
    """Restore once with ``method`` into a resident model on ``device``; print seconds, peak
    RSS and (on a GPU) peak device memory.

    A restore of a 64 KB state by the same method comes first, in the same process: the
    first use of a library pages in its code (torch alone ~1.7 MB of it, file-backed and
    shared) and starts its threads (and, on a GPU, its context), which is not memory the
    state needs. Both the time and the peaks below are those of the restore that follows.
    """
    model = Blob(nbytes).fill(seed=None).to(device)
    with tempfile.TemporaryDirectory(prefix="ckptlab-bench-warmup-") as tmp:
        _restorer(method, Blob(64_000).fill(seed=None).to(device),
                  _tiny_checkpoint(method, Path(tmp)), device)()
    restore = _restorer(method, model, path, device)
    _synchronize(device)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident size
    before = _rss_kib("VmRSS:")
    device_before = 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        device_before = torch.cuda.memory_allocated(device)
    sha_seconds = 0.0
    t0 = time.perf_counter()
    restore()
    _synchronize(device)
    seconds = time.perf_counter() - t0
    peak = _rss_kib("VmHWM:") - before
    device_peak = (torch.cuda.max_memory_allocated(device) - device_before
                   if device.type == "cuda" else 0)
    if method == "safetensors":  # what one SHA-256 pass over the same bytes costs here
        host = [p.detach().cpu() for p in model.parameters()]  # (untimed on a GPU)
        t1 = time.perf_counter()
        digest = hashlib.sha256()
        for p in host:
            digest.update(memoryview(p.numpy()).cast("B"))
        sha_seconds = time.perf_counter() - t1
    assert all(p.abs().sum() > 0 for p in model.parameters()), "nothing was restored"
    print(json.dumps({"seconds": seconds, "sha_seconds": sha_seconds,
                      "peak_bytes": peak * 1024, "device_peak_bytes": device_peak}))


def restore_side(nbytes: int, repeats: int, files: dict[str, Path],
                 device: torch.device) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {}
    methods = list(files)
    for i in range(repeats):
        for mode in ("cold", "warm"):
            order = methods[i % len(methods):] + methods[:i % len(methods)]
            for method in order:
                (_evict if mode == "cold" else _warm)(files[method])
                out = subprocess.run(
                    [sys.executable, __file__, "--device", str(device), "--child", method,
                     str(files[method]), str(nbytes)], capture_output=True, text=True,
                    check=True)
                result = json.loads(out.stdout.strip().splitlines()[-1])
                results.setdefault(f"{method} {mode}", []).append(result["seconds"])
                results.setdefault(f"{method} peak", []).append(result["peak_bytes"])
                results.setdefault(f"{method} device peak", []).append(
                    result["device_peak_bytes"])
                if method == "safetensors":
                    results.setdefault(f"sha {mode}", []).append(result["sha_seconds"])
    return results


# --- report --------------------------------------------------------------------------------

def median(xs: list[float]) -> float:
    return statistics.median(xs)


def paired(a: list[float], b: list[float]) -> float:
    return statistics.median(x / y for x, y in zip(a, b))


def report(size_mb: float, state_bytes: int, save: dict[str, list[float]],
           load: dict[str, list[float]]) -> None:
    ms = lambda xs: f"{median(xs) * 1e3:.1f}"  # noqa: E731
    print(f"\n### {size_mb:g} MB state ({state_bytes / MB:.1f} MiB), "
          f"{len(save['ckptlab save'])} save / {len(load['ckptlab cold'])} restore repeats")
    print("| save | ms (median) | ckptlab / this (paired) |\n|---|---:|---:|")
    for name in ("ckptlab save", "safetensors save+fsync", "torch.save+fsync", "DCP save",
                 "raw write+fsync"):
        print(f"| {name} | {ms(save[name])} | {paired(save['ckptlab save'], save[name]):.2f}x |")
    print("\n| async save | ms (median) | share of a sync save (paired) |\n|---|---:|---:|")
    for name in ("first async blocked (copy)", "async blocked (copy)", "async total (copy)",
                 "async blocked (no copy, until staged)", "async total (no copy)",
                 "async call (copy in background)", "forward+backward of a batch of 4",
                 "async blocked (copy in background, forward+backward between)",
                 "async total (copy in background)"):
        if name in save:
            sync = save["ckptlab save"][:len(save[name])]
            print(f"| {name} | {ms(save[name])} | {100 * paired(save[name], sync):.0f}% |")
    on_device = any(median(load[f"{m} device peak"]) for m in ("ckptlab", "safetensors"))
    print("\n| restore | cold ms | warm ms | peak RSS / state |"
          + (" peak device memory / state |\n|---|---:|---:|---:|---:|" if on_device
             else "\n|---|---:|---:|---:|"))
    for method in ("ckptlab", "safetensors", "torch", "dcp"):
        peak = median(load[f"{method} peak"]) / state_bytes
        device_peak = (f" {median(load[f'{method} device peak']) / state_bytes:.2f}x |"
                       if on_device else "")
        print(f"| {method} | {ms(load[f'{method} cold'])} | {ms(load[f'{method} warm'])} | "
              f"{peak:.2f}x |{device_peak}")
    for mode in ("cold", "warm"):
        target = [s + h for s, h in zip(load[f"safetensors {mode}"], load[f"sha {mode}"])]
        print(f"| safetensors + one SHA-256 pass, {mode} | {ms(target)} ms | "
              f"ckptlab / this: **{paired(load[f'ckptlab {mode}'], target):.2f}x** | "
              f"(vs safetensors alone "
              f"{paired(load[f'ckptlab {mode}'], load[f'safetensors {mode}']):.2f}x) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mb", type=float, nargs="+", default=[1, 10, 100, 1000])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--big-repeats", type=int, default=2, help="repeats at >= 500 MB")
    parser.add_argument("--device", default="cpu",
                        help="where the restored model lives: cpu (default) or cuda[:N]")
    parser.add_argument("--child", nargs=3, metavar=("METHOD", "PATH", "BYTES"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    try:
        device = torch.device(args.device)
    except RuntimeError as exc:  # torch's own words for a string it cannot parse
        parser.error(f"--device {args.device}: {exc}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: this torch sees no CUDA device "
                     f"(torch {torch.__version__}); run on a machine with a GPU and a CUDA "
                     "build of torch, or leave --device out")
    if device.type not in ("cpu", "cuda"):
        parser.error(f"--device {args.device}: only cpu and cuda[:N] are measured")
    torch.set_num_threads(1)  # the project's default for runs; also steadier on a shared machine
    if args.child:
        child(args.child[0], Path(args.child[1]), int(args.child[2]), device)
        return
    print(f"machine: {describe()}; load average {os.getloadavg()[0]:.1f}; restores to {device}")
    for size_mb in args.sizes_mb:
        repeats = args.big_repeats if size_mb >= 500 else args.repeats
        nbytes = int(size_mb * 1e6)
        with tempfile.TemporaryDirectory(prefix="ckptlab-bench-") as tmp:
            save, files = save_side(nbytes, repeats, Path(tmp))
            load = restore_side(nbytes, repeats, files, device)
        state_bytes = PIECES * 4 * max(1, nbytes // 4 // PIECES) + 4000
        report(size_mb, state_bytes, save, load)
        sys.stdout.flush()


if __name__ == "__main__":
    main()
