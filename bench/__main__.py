"""``python -m bench [e2e] [output]``: run the benchmarks, write bench/RESULTS.md."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from bench import common

ORDER = ("e2e", "output", "cluster", "stats")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "benchmarks", nargs="*", metavar="{e2e,output,cluster,stats}", help="which to run (default: all)"
    )
    parser.add_argument(
        "--profile",
        choices=("auto", "always", "never"),
        default="auto",
        help="py-spy profile: when a goal is missed (auto), always, or never",
    )
    parser.add_argument("--seq", type=int, default=30, help="e2e: sequential jobs per side (default 30)")
    parser.add_argument("--rounds", type=int, default=3, help="e2e: concurrent rounds per side (default 3)")
    parser.add_argument("--concurrency", type=int, default=20, help="e2e: jobs per concurrent round (default 20)")
    parser.add_argument("--reps", type=int, default=4, help="output: runs per side (default 4)")
    parser.add_argument("--output-warmup", type=int, default=1, help="output: unmeasured runs per side first (1)")
    parser.add_argument("--output-bytes", type=int, default=1 << 30, help="output: bytes the job prints (1 GiB)")
    parser.add_argument(
        "--node-env",
        action="append",
        default=[],
        metavar="HADDOCK_X=Y",
        help="output: extra setting for the node process (an experiment, e.g. HADDOCK_DOCKER__LOG_DRIVER=none)",
    )
    parser.add_argument("--asks", type=int, default=1000, help="cluster: bid round trips (default 1000)")
    parser.add_argument("--cluster-jobs", type=int, default=30, help="cluster: no-op jobs per round (default 30)")
    parser.add_argument("--stats-containers", type=int, default=50, help="stats: running containers (50)")
    parser.add_argument("--stats-seconds", type=float, default=30.0, help="stats: seconds per mode (30)")
    parser.add_argument("--no-write", action="store_true", help="print the results, leave RESULTS.md alone")
    args = parser.parse_args(argv)
    unknown = [b for b in args.benchmarks if b not in ORDER]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(ORDER)}")
    chosen = [b for b in ORDER if b in (args.benchmarks or ORDER)]

    sections: dict[str, str] = {}
    t0 = time.perf_counter()
    common.log(f"run {common.RUN_TOKEN}: {', '.join(chosen)}")
    with common.sigterm_as_exit():
        try:
            if "e2e" in chosen:
                from bench import e2e

                cfg = e2e.E2EConfig(
                    seq_n=args.seq, concurrency=args.concurrency, rounds=args.rounds, profile=args.profile
                )
                sections["e2e"] = asyncio.run(e2e.run(cfg))
                common.remove_bench_containers()
            if "output" in chosen:
                from bench import output

                node_env = dict(item.split("=", 1) for item in args.node_env)
                ocfg = output.OutputConfig(
                    reps=args.reps,
                    warmup=args.output_warmup,
                    size=args.output_bytes,
                    profile=args.profile,
                    node_env=node_env,
                )
                sections["output"] = output.run(ocfg)
            if "cluster" in chosen:
                from bench import cluster

                ccfg = cluster.ClusterConfig(asks=args.asks, jobs=args.cluster_jobs)
                sections["cluster"] = asyncio.run(cluster.run(ccfg))
            if "stats" in chosen:
                from bench import stats

                sections["stats"] = stats.run(
                    stats.StatsConfig(containers=args.stats_containers, seconds=args.stats_seconds)
                )
        finally:
            left = common.remove_bench_containers()
            if left:
                common.log(f"warning: {left} container(s) were left by the benchmarks (removed now)")
    machine = "### Machine\n\n" + common.machine_markdown(common.machine_info())
    if args.no_write:
        print(machine)
        for body in sections.values():
            print("\n" + body)
    else:
        path = common.update_results(sections, machine, ORDER)
        common.log(f"results written to {path.relative_to(common.ROOT)}")
    common.log(f"done in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
