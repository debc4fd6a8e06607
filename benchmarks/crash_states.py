"""The crash-state explorer over every write path: states explored, violations, states/second.

Every engine operation (``ckptlab.engine.crash_recovery.WORKLOADS``) and a DQN run's save
(``ckptlab.dqn.crash_resume``), each under both persistence models, every crash state checked
(issue 27: within a couple of minutes on 2 cores).

    PYTHONPATH=. python benchmarks/crash_states.py [--jobs 2] [--models ordered adversarial]

``--jobs N`` explores N operations at a time, each in its own process. States/second counts
every crash state constructed; disks are the distinct ones recovery ran on.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor

from benchmarks._machine import describe
from ckptlab.engine.crash_recovery import WORKLOADS, explore_operation
from ckptlab.engine.crash_states import MODELS, Exploration

DQN = "dqn-save"


def explore_one(job: tuple[str, str]) -> Exploration:
    name, model = job
    if name == DQN:
        from ckptlab.dqn.crash_resume import explore_dqn_save

        return explore_dqn_save(model)
    return explore_operation(name, model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="operations explored at a time")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    args = parser.parse_args()
    jobs = [(name, model) for name in [*WORKLOADS, DQN] for model in args.models]
    print(describe())
    started = time.perf_counter()
    if args.jobs > 1:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
            results = list(pool.map(explore_one, jobs))
    else:
        results = [explore_one(job) for job in jobs]
    wall = time.perf_counter() - started
    for found in results:
        print(found.summary())
        for violation in found.violations[:3]:
            print(f"    {violation}")
    states = sum(found.crash_states for found in results)
    disks = sum(found.disks for found in results)
    violating = sum(found.violating_states for found in results)
    busy = sum(found.seconds for found in results)
    print(f"total: {len(results)} explorations, {states} crash states, {disks} disks checked, "
          f"{violating} violating; {wall:.1f} s wall with {args.jobs} job(s) "
          f"({busy:.1f} s exploring): {states / wall:.0f} states/s, {disks / wall:.0f} disks/s")


if __name__ == "__main__":
    main()
