"""``python -m bench [e2e] [output] [cluster] [gateway]``: run the benchmarks, write bench/RESULTS.md."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from bench import common, profiling

ORDER = ("e2e", "output", "cluster", "stats", "gateway")
MiB = 1024 * 1024


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "benchmarks", nargs="*", metavar="{e2e,output,cluster,stats,gateway}", help="which to run (default: all)"
    )
    parser.add_argument(
        "--profile",
        choices=("auto", "always", "never"),
        default="auto",
        help="where the time or memory goes (py-spy profiles, CPU per thread, import footprints, the floor with the "
        "node's log driver): when a goal is missed (auto), always, or never",
    )
    parser.add_argument("--seq", type=_positive, default=30, help="e2e: sequential jobs per side (default 30)")
    parser.add_argument("--warmup", type=int, default=3, help="e2e: unmeasured jobs per side first (default 3)")
    parser.add_argument("--rounds", type=_positive, default=3, help="e2e: concurrent rounds per side (default 3)")
    parser.add_argument("--concurrency", type=_positive, default=20, help="e2e: jobs per concurrent round (20)")
    parser.add_argument("--reps", type=_positive, default=5, help="output: measured reps of each run (default 5)")
    parser.add_argument("--output-warmup", type=int, default=1, help="output: unmeasured warm-up pairs first (1)")
    parser.add_argument("--output-mib", type=_positive, default=512, help="output: MiB each job prints (default 512)")
    parser.add_argument("--long-lines", type=_positive, default=8, help="output: lines of case 2 (default 8)")
    parser.add_argument(
        "--node-env",
        action="append",
        default=[],
        metavar="HADDOCK_X=Y",
        help="output: extra setting for the node process (an experiment, e.g. HADDOCK_DOCKER__LOG_DRIVER=none; "
        "the results say the node did not run with its defaults)",
    )
    parser.add_argument(
        "--no-write", action="store_true", help="print the results; leave RESULTS.md and bench/profiles/ alone"
    )
    parser.add_argument("--asks", type=_positive, default=1000, help="cluster: bid round trips (default 1000)")
    parser.add_argument("--cluster-jobs", type=_positive, default=30, help="cluster: no-op jobs per round (30)")
    parser.add_argument("--stats-containers", type=_positive, default=50, help="stats: running containers (50)")
    parser.add_argument("--stats-seconds", type=float, default=30.0, help="stats: seconds per mode (30)")
    parser.add_argument("--gw-clients", type=_positive, default=50, help="gateway: concurrent clients (default 50)")
    parser.add_argument("--gw-seconds", type=float, default=5.0, help="gateway: seconds per phase (default 5)")
    parser.add_argument("--gw-rounds", type=_positive, default=3, help="gateway: phases per side (default 3)")
    args = parser.parse_args(argv)
    unknown = [b for b in args.benchmarks if b not in ORDER]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(ORDER)}")
    bad = [item for item in args.node_env if "=" not in item or not item.startswith("HADDOCK_")]
    if bad:
        parser.error(f"--node-env takes HADDOCK_X=Y, not {', '.join(map(repr, bad))}")
    chosen = [b for b in ORDER if b in (args.benchmarks or ORDER)]

    sections: dict[str, str] = {}
    t0 = time.perf_counter()
    common.log(f"run {common.RUN_TOKEN}: {', '.join(chosen)}")
    with common.sigterm_as_exit():
        try:
            if "e2e" in chosen:
                from bench import e2e

                cfg = e2e.E2EConfig(
                    seq_n=args.seq,
                    warmup=args.warmup,
                    concurrency=args.concurrency,
                    rounds=args.rounds,
                    profile=args.profile,
                )
                sections["e2e"], _ = asyncio.run(e2e.run(cfg))
                common.remove_bench_containers()
            if "output" in chosen:
                from bench import output

                ocfg = output.OutputConfig(
                    reps=args.reps,
                    warmup=args.output_warmup,
                    size=args.output_mib * MiB,
                    long_lines=args.long_lines,
                    profile=args.profile,
                    node_env=dict(item.split("=", 1) for item in args.node_env),
                )
                sections["output"], _ = output.run(ocfg)
            if "cluster" in chosen:
                from bench import cluster

                ccfg = cluster.ClusterConfig(asks=args.asks, jobs=args.cluster_jobs)
                sections["cluster"] = asyncio.run(cluster.run(ccfg))
            if "stats" in chosen:
                from bench import stats

                sections["stats"] = stats.run(
                    stats.StatsConfig(containers=args.stats_containers, seconds=args.stats_seconds)
                )
            if "gateway" in chosen:
                from bench import gateway

                gcfg = gateway.GatewayConfig(clients=args.gw_clients, seconds=args.gw_seconds, rounds=args.gw_rounds)
                sections["gateway"] = gateway.run(gcfg)
        finally:
            left = common.remove_bench_containers()
            if left:
                common.log(f"warning: {left} container(s) were left by the benchmarks (removed now)")
    machine = "### Machine\n\n" + common.machine_markdown(common.machine_info())
    if args.no_write:
        print(machine + "\n\n" + common.goals_summary("\n".join(sections.values()), ORDER))
        for body in sections.values():
            print("\n" + body)
        kept = profiling.taken()
        if kept is not None:
            common.log(f"profiles of this run (not kept in bench/profiles/): {kept}")
        else:
            profiling.discard()
    else:
        for name in sections:
            profiling.keep_profiles(name)
        profiling.discard()
        path = common.update_results(sections, machine, ORDER)
        common.log(f"results written to {path.relative_to(common.ROOT)}")
    common.log(f"done in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
