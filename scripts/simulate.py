#!/usr/bin/env python3
"""Run the whole-engine simulation (fusedrive/testing/simulation.py) over many seeds, on
every core, and print each failure as a seed to replay with the shortest step sequence it
shrinks to (paste it into tests/test_simulation.py as a named regression test).

    scripts/simulate.py --seeds 0:2000                  # what the suite runs
    scripts/simulate.py --seeds 0:1000000 --failures found.jsonl   # overnight, both cores
    scripts/simulate.py --replay 176                    # one seed, every step and kill printed

Exit codes: 0 every seed passed, 1 a seed failed, 2 bad arguments. A seed is the same run
in every process started with the same PYTHONHASHSEED (this script sets it to 0).
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import sys
import time
from pathlib import Path

if os.environ.get("PYTHONHASHSEED") != "0":  # set iteration order is part of a run: fix it
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable, *sys.argv])

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tqdm import tqdm  # noqa: E402

from fusedrive.testing.simulation import Faults, Outcome, Step, plan, shrink, simulate  # noqa: E402

SCRATCH = Path("/dev/shm") if Path("/dev/shm").is_dir() else None  # cache dirs on tmpfs: a seed is cheaper
CHUNK = 25  # seeds per task handed to a worker


def seed_range(text: str) -> range:
    try:
        first, _, last = text.partition(":")
        return range(int(first), int(last)) if last else range(int(first), int(first) + 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a seed or a range of seeds FIRST:LAST") from None


def run_seeds(seeds: list[int], operations: int, rollbacks: bool, faults: Faults, shared: bool) -> list[Outcome]:
    logging.disable(logging.CRITICAL)  # the engine's warnings about the faults it is fed
    return [simulate(seed, plan(seed, operations, rollbacks=rollbacks, shared=shared), faults, base=SCRATCH,
                     shared=shared)
            for seed in seeds]


def print_failure(outcome: Outcome, shrunk: tuple[list[Step], Faults] | None, shared: bool) -> None:
    print(f"\n{outcome.report()}", flush=True)
    if shrunk is not None:
        steps, faults = shrunk
        also = ", shared=True" if shared else ""
        print(f"shrunk to {len(steps)} steps (replay: simulate({outcome.seed}, STEPS, {faults!r}{also})):\nSTEPS = [")
        for step in steps:
            print(f"    {step!r},")
        print("]", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=seed_range, default=seed_range("0:2000"), help="FIRST:LAST (default 0:2000)")
    parser.add_argument("--operations", type=int, default=60, help="steps per seed (default 60)")
    parser.add_argument("--rollbacks", action="store_true",
                        help="the store is also put back to an older copy now and then (goes back in time)")
    parser.add_argument("--shared", action="store_true",
                        help="a volume shared with people: every entry signed, everything sealed under key epoch 1")
    defaults = Faults()
    for name, what in (("fail", "a request fails"), ("lose", "a write's answer is lost"), ("hang", "a call hangs"),
                       ("crash", "the device is killed at a store call or crash point")):
        parser.add_argument(f"--{name}", type=float, default=getattr(defaults, name), metavar="P",
                            help=f"chance that {what} (default {getattr(defaults, name)})")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: every core)")
    parser.add_argument("--shrink", type=int, default=3, metavar="N", help="shrink the first N failures (default 3)")
    parser.add_argument("--failures", type=Path, help="append each failure here as a JSON line, as it is found")
    parser.add_argument("--replay", type=int, metavar="SEED", help="run one seed, printing every step and kill")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args()
    if args.operations < 1 or args.workers < 1:
        parser.error("--operations and --workers must be at least 1")
    if not all(0 <= chance < 1 for chance in (args.fail, args.lose, args.hang, args.crash)):
        parser.error("--fail, --lose, --hang and --crash are chances from 0 to 1")
    faults = Faults(args.fail, args.lose, args.hang, args.crash)

    if args.replay is not None:
        os.environ["FUSEDRIVE_SIMULATION_TRACE"] = "1"
        logging.disable(logging.CRITICAL)
        outcome = simulate(args.replay, plan(args.replay, args.operations, rollbacks=args.rollbacks,
                                             shared=args.shared), faults,
                           base=SCRATCH, shared=args.shared)
        print(outcome.report())
        return 0 if outcome.failure is None else 1

    seeds = list(args.seeds)
    chunks = [seeds[i:i + CHUNK] for i in range(0, len(seeds), CHUNK)]
    started = time.monotonic()
    totals = {"virtual_seconds": 0.0, "requests": 0, "faults": 0, "crashes": 0, "operations": 0, "saves_checked": 0}
    failures: list[Outcome] = []
    with multiprocessing.get_context("fork").Pool(args.workers) as pool, \
            tqdm(total=len(seeds), unit="seed", disable=args.quiet, file=sys.stderr) as bar:
        for outcomes in pool.imap_unordered(_run_chunk, [(chunk, args.operations, args.rollbacks, faults, args.shared)
                                                      for chunk in chunks]):
            for outcome in outcomes:
                for name in totals:
                    totals[name] += getattr(outcome, name)
                if outcome.failure is not None:
                    failures.append(outcome)
                    bar.write(outcome.report())
                    if args.failures is not None:
                        with args.failures.open("a") as f:
                            f.write(json.dumps({"seed": outcome.seed, "failure": outcome.failure}) + "\n")
            bar.update(len(outcomes))
    elapsed = time.monotonic() - started
    print(f"{len(seeds)} seeds in {elapsed:.0f} s on {args.workers} processes: {len(failures)} failed; "
          f"{totals['operations']} operations done, {totals['virtual_seconds']:.0f} virtual seconds, "
          f"{totals['requests']} store requests, {totals['faults']} faults, {totals['crashes']} kills, "
          f"{totals['saves_checked']} closed saves checked", flush=True)
    for outcome in sorted(failures, key=lambda o: o.seed)[:args.shrink]:
        logging.disable(logging.CRITICAL)
        print_failure(outcome, shrink(outcome.seed, outcome.steps, outcome.failure, faults, base=SCRATCH,
                                      shared=args.shared), args.shared)
    for outcome in sorted(failures, key=lambda o: o.seed)[args.shrink:]:
        print_failure(outcome, None, args.shared)
    return 1 if failures else 0


def _run_chunk(job: tuple[list[int], int, bool, Faults, bool]) -> list[Outcome]:
    return run_seeds(*job)


if __name__ == "__main__":
    sys.exit(main())
