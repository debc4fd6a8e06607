"""Benchmark 2: what a checkpoint costs.

1. A synchronous save and a load of the complete training state with >= 50k transitions in the
   replay buffer, against writing (and reading) the same number of bytes raw, with fsync, in
   the same run. Reported as ratios (target: <= 1.5x), against a plain write and against one
   that starts its writeback early like a save does.
2. How long the training thread is held by an asynchronous save (snapshot only) compared with
   a synchronous one (target: <= 10%).
3. Checkpointing's share of training wall time at the default save cadence (target: <= 2%).

    python benchmarks/checkpoint_cost.py [--transitions 50000] [--repeats 15]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._machine import describe  # noqa: E402
from ckptlab import CheckpointManager, DQNConfig, Trainer  # noqa: E402
from ckptlab.engine.writer import _WRITEBACK_PIECE, _start_writeback  # noqa: E402


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def raw_write(path: Path, data: bytes) -> float:
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return time.perf_counter() - t0


def raw_write_hinted(path: Path, data: bytes) -> float:
    """A raw write + fsync that starts the writeback every 512 KiB, as a save does: the
    fairest raw peer (a plain write hands the kernel all the pages at the fsync)."""
    t0 = time.perf_counter()
    view = memoryview(data)
    with open(path, "wb", buffering=0) as f:
        for offset in range(0, len(data), _WRITEBACK_PIECE):
            f.write(view[offset:offset + _WRITEBACK_PIECE])
            _start_writeback(f.fileno(), offset, len(view[offset:offset + _WRITEBACK_PIECE]))
        os.fsync(f.fileno())
    return time.perf_counter() - t0


def raw_read(path: Path) -> float:
    t0 = time.perf_counter()
    path.read_bytes()
    return time.perf_counter() - t0


def save_and_load(transitions: int, repeats: int) -> None:
    # Fill the buffer with real transitions; no updates, so filling is quick.
    config = DQNConfig(buffer_capacity=transitions, learning_starts=10**9,
                       total_steps=10**9, eval_every_epochs=10**6)
    with tempfile.TemporaryDirectory() as tmp:
        # Retention is off on both sides: deleting old files is not part of writing new ones.
        trainer = Trainer(config, Path(tmp) / "run")
        loader = Trainer(config)  # a fresh run to load into, as a resume would
        reader = CheckpointManager(Path(tmp) / "run" / "checkpoints", create=False)
        for name, component in loader.components().items():
            reader.register(name, component)
        trainer.train(until_step=transitions)
        assert len(trainer.buffer) == transitions
        save_times, load_times, raw_w, raw_h, raw_r = [], [], [], [], []
        size = trainer.save().total_bytes  # a first save, to learn the size (not timed)
        trainer.progress.step += 1
        saved = []

        def save() -> None:
            saved.append(trainer.save())
            save_times.append(trainer.checkpoints.last_save_timings.total)
            trainer.progress.step += 1  # next save gets its own directory

        for i in range(repeats):
            raw_path = Path(tmp) / f"raw-{i}.bin"  # a new file each time, like a checkpoint
            data = os.urandom(size)
            sides = [save, lambda: raw_w.append(raw_write(raw_path, data)),
                     lambda: raw_h.append(raw_write_hinted(Path(tmp) / f"hinted-{i}.bin",
                                                           data))]
            # Rotate which side runs first, so none always meets a freshly busy disk.
            for side in sides[i % 3:] + sides[:i % 3]:
                side()
            info = saved[-1]
            raw_r.append(raw_read(raw_path))
            t0 = time.perf_counter()
            reader.restore(info.path)  # the path users call: verify, decode, load in one pass
            load_times.append(time.perf_counter() - t0)
        trainer.close()
        loader.close()
    ms = lambda xs: statistics.median(xs) * 1e3  # noqa: E731
    timings = trainer.checkpoints.last_save_timings
    print(f"checkpoint size: {size / 1e6:.2f} MB ({transitions} transitions in the buffer)")
    # Each save is paired with the raw writes of its round (the order rotates), so slow phases
    # of the disk hit every side; the median of the per-pair ratios is the headline figure.
    paired = statistics.median(a / b for a, b in zip(save_times, raw_w))
    print(f"  save (serialize+hash+write+fsync+commit): {ms(save_times):7.2f} ms   "
          f"raw write+fsync of the same bytes: {ms(raw_w):6.2f} ms")
    print(f"    ratio: {paired:.2f}x median of paired ratios, "
          f"{ms(save_times) / ms(raw_w):.2f}x ratio of medians (target <= 1.5x)")
    hinted = statistics.median(a / b for a, b in zip(save_times, raw_h))
    print(f"    against a raw write + fsync that also starts its writeback early "
          f"({ms(raw_h):.2f} ms): {hinted:.2f}x median of paired ratios")
    print(f"    last save split: snapshot {timings.snapshot * 1e3:.2f} ms, "
          f"write {timings.write * 1e3:.2f} ms, commit+pointer {timings.commit * 1e3:.2f} ms")
    print(f"  load (read+verify hashes+decode+restore): {ms(load_times):7.2f} ms   "
          f"raw read of the same bytes:        {ms(raw_r):6.2f} ms   "
          f"ratio {ms(load_times) / ms(raw_r):.2f}x")
    blob = os.urandom(size)
    hash_ms = statistics.median(_time(lambda: hashlib.sha256(blob).digest()) for _ in range(9))
    print(f"    of which SHA-256 verification of {size / 1e6:.2f} MB alone: {hash_ms * 1e3:.2f} ms")
    print(f"  (medians of {repeats} repeats; raw reads come from the page cache)")


def async_blocking(transitions: int, repeats: int) -> None:
    """How long the training thread is held by a save: synchronous vs asynchronous.

    Saves alternate between the two kinds, with 500 training steps between saves, as in a real
    run (back-to-back saves would measure the disk's backlog, not the save).
    """
    config = DQNConfig(buffer_capacity=transitions, learning_starts=10**9,
                       total_steps=10**9, eval_every_epochs=10**6)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(config, Path(tmp) / "run")
        trainer.train(until_step=transitions)
        manager = trainer.checkpoints
        sync_block, async_block = [], []
        for i in range(2 * repeats):
            trainer.train(until_step=trainer.progress.step + 500)
            asynchronous = bool(i % 2)
            trainer.save(blocking=not asynchronous)
            (async_block if asynchronous else sync_block).append(manager.last_blocking_seconds)
        manager.wait()
        trainer.close()
    ms = lambda xs: statistics.median(xs) * 1e3  # noqa: E731
    print(f"  training thread blocked by a save: sync {ms(sync_block):.2f} ms, async "
          f"{ms(async_block):.2f} ms = {100 * ms(async_block) / ms(sync_block):.0f}% of sync "
          f"(target <= 10%)")


def share_of_training(steps: int) -> None:
    config = DQNConfig(total_steps=steps)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(config, tmp)
        result = trainer.train()
        trainer.close()
    share = result.save_seconds / result.train_seconds
    print(f"training {steps} steps at the default cadence (a save every "
          f"{config.save_every_steps} steps): {result.saves} saves took "
          f"{result.save_seconds * 1e3:.1f} ms of {result.train_seconds:.1f} s = "
          f"{100 * share:.2f}% (target <= 2%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transitions", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=25)
    parser.add_argument("--train-steps", type=int, default=20_000)
    args = parser.parse_args()
    print(f"machine: {describe()}")
    save_and_load(args.transitions, args.repeats)
    async_blocking(args.transitions, args.repeats)
    share_of_training(args.train_steps)


if __name__ == "__main__":
    main()
