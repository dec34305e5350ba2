"""The markdown section of the output benchmark (``bench/output.py``) and its goal rows."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from bench import common, profiling
from bench.common import RUN_TOKEN, table
from bench.nodeproc import Mem
from bench.output import GOAL_FLOOR, GOAL_LONG, GOAL_RSS_MIB, Diagnosis, MiB, NodeRun, Results
from bench.raw import describe_config, node_defaults


def _mib(kib: float) -> str:
    return f"{kib / 1024:.1f}"


def _med(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def judge(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def goal_rows(res: Results) -> list[list[str]]:
    short, long_ = res.cases
    nf, ff = [n.wall for n in res.node["short"]], [f.wall for f in res.floor["short"]]
    nl = [n.wall for n in res.node["long"]]
    r_floor, r_long = res.ratio_floor("short"), res.ratio_long()
    hwm = res.hwm_sum_kib
    parts = " + ".join(f"{m.name} {_mib(m.hwm)}" for m in res.end.values() if m.alive)
    return [
        [
            f"{short.title} through the node / the floor (docker CLI, `--log-driver none`)",
            f"≤ {GOAL_FLOOR:.2f}x",
            f"{r_floor:.2f}x (median s: node {_med(nf):.2f}, floor {_med(ff):.2f})",
            judge(r_floor <= GOAL_FLOOR),
        ],
        [
            "node peak RSS (VmHWM, summed over the node's processes)",
            f"≤ {GOAL_RSS_MIB} MiB",
            f"{_mib(hwm)} MiB ({parts})",
            judge(hwm / 1024 <= GOAL_RSS_MIB),
        ],
        [
            f"{long_.title} through the node / {short.title} through the node",
            f"≤ {GOAL_LONG:.2f}x",
            f"{r_long:.2f}x (median s: {_med(nl):.2f} vs {_med(nf):.2f})",
            judge(r_long <= GOAL_LONG),
        ],
    ]


def report(res: Results) -> tuple[str, list[list[str]]]:
    cfg = res.cfg
    rows = goal_rows(res)
    size_mib = cfg.size / MiB
    driver = node_defaults()
    settings = ", ".join(f"`{k}={v}`" for k, v in cfg.node_env.items())
    procs = ", ".join(f"{m.name} (pid {pid}{'' if m.alive else ', exited'})" for pid, m in res.end.items())
    out = [
        f"### 2. Output at the speed of the engine: {size_mib:.0f} MiB through the node vs the floor",
        "",
        f"Run {common.machine_info()['date']}; ids and container names start with `{RUN_TOKEN}`. The node's "
        f"processes: {procs}. Its engine log driver: `{driver['log_driver']}`"
        + (f" ({', '.join(f'{k}={v}' for k, v in driver['log_opts'].items())})" if driver["log_opts"] else "")
        + ("." if not settings else f". **Not the default settings**: {settings}."),
        "",
        common.goals_block("output", rows),
        "",
        f"- **Case 1**: `sh -c '{res.cases[0].script}'`. **Case 2**: `sh -c '{res.cases[1].script}'`; both in "
        f"`{common.IMAGE}`, {size_mib:.0f} MiB to stdout.",
        "- **node**: `haddock serve` as its own process, default settings (env: a temp `HADDOCK_DATA_DIR`, "
        "`HADDOCK_LISTEN` on a free 127.0.0.1 port, `HADDOCK_ON_SHUTDOWN=stop`); wall = `NodeClient.run` from the "
        "call to the result (image check, create, attach, start, the whole output into the node's log store and "
        "`results/stdout`, wait, results, remove); `results/stdout` is checked to hold every byte.",
        "- **floor**: `docker run --rm --log-driver none` of the same container "
        f"({describe_config(log_driver=False)}, same name pattern, labels and env), attached, output to "
        "/dev/null; wall = the CLI's, start to exit (remove included).",
        f"- {cfg.warmup} unmeasured warm-up pair(s) of case 1, then {cfg.reps} reps of node 1, floor 1, node 2, "
        "floor 2; `sync` before each run. Ratios are the medians of the per-rep ratios.",
        "- Memory: every 20 ms the VmRSS of each of the node's processes (the daemon, and those naming its data dir "
        "or descending from it); VmHWM (the kernel's peak, whole life: start-up, a warm-up `true` job, the "
        "runs) read after the measured runs.",
        "",
        "**Wall time** (s) and the node's peak RSS in each run (MiB, the highest same-instant sum over its processes):",
        "",
        _runs_table(res),
        "",
        "**Memory of the node's processes** (MiB): idle RSS = after start-up and one `true` job; end = after the "
        "measured runs (RssAnon: the process's own heap; RssFile: mapped files, shared libraries included; PSS: "
        "shared pages divided among the processes that share them, so the PSS sum does not count them twice):",
        "",
        _memory_table(res.idle, res.end),
        "",
        "**CPU per run** (s, median over the reps; engine = dockerd + containerd, the container's own CPU "
        "not included):",
        "",
        _cpu_table(res),
        "",
        "**Where a node run's time goes** (s, median over the reps, from the execution's events):",
        "",
        _spans_table(res),
    ]
    out += _diagnosis(res, res.diagnosis)
    return "\n".join(out), rows


def _runs_table(res: Results) -> str:
    head = ["rep"]
    for c in res.cases:
        head += [f"{c.key}: node", f"{c.key}: floor", f"{c.key}: node/floor", f"{c.key}: node RSS"]
    head += ["long/short (node)", "machine busy (node runs)"]
    body = []
    for i in range(res.cfg.reps):
        row = [str(i + 1)]
        for c in res.cases:
            n, f = res.node[c.key][i], res.floor[c.key][i]
            row += [f"{n.wall:.2f}", f"{f.wall:.2f}", common.ratio(n.wall, f.wall), _mib(n.rss["sum"])]
        ns, nl = res.node["short"][i], res.node["long"][i]
        row += [common.ratio(nl.wall, ns.wall), f"{100 * ns.machine_busy:.0f}% / {100 * nl.machine_busy:.0f}%"]
        body.append(row)
    med = ["**median**"]
    for c in res.cases:
        nw, fw = [n.wall for n in res.node[c.key]], [f.wall for f in res.floor[c.key]]
        rss = [n.rss["sum"] for n in res.node[c.key]]
        med += [f"{_med(nw):.2f}", f"{_med(fw):.2f}", f"{res.ratio_floor(c.key):.3f}x", _mib(max(rss))]
    med += [f"{res.ratio_long():.3f}x", ""]
    body.append(med)
    mbs = ["MiB/s (median)"]
    size = res.cfg.size / MiB
    for c in res.cases:
        mbs += [
            f"{size / _med([n.wall for n in res.node[c.key]]):.0f}",
            f"{size / _med([f.wall for f in res.floor[c.key]]):.0f}",
            "",
            "",
        ]
    body.append([*mbs, "", ""])
    return table(body, head)


def _memory_table(idle: dict[int, Mem], end: dict[int, Mem]) -> str:
    rows = []
    for pid, m in end.items():
        i = idle.get(pid)
        name = f"{m.name} (pid {pid})" if m.alive else f"{m.name} (pid {pid}, exited: not summed)"
        cells = [_mib(m.hwm), _mib(m.anon), _mib(m.file), _mib(m.pss)] if m.alive else [_mib(m.hwm), "", "", ""]
        rows.append([name, _mib(i.rss) if i else "(not running)", *cells])
    live = [m for m in end.values() if m.alive]
    rows.append(
        [
            "**sum**",
            _mib(sum(m.rss for m in idle.values() if m.alive)),
            f"**{_mib(sum(m.hwm for m in live))}**",
            _mib(sum(m.anon for m in live)),
            _mib(sum(m.file for m in live)),
            _mib(sum(m.pss for m in live)),
        ]
    )
    return table(rows, ("process", "idle RSS", "VmHWM (end)", "RssAnon (end)", "RssFile (end)", "PSS (end)"))


def _cpu_table(res: Results) -> str:
    names = list(dict.fromkeys(k for runs in res.node.values() for n in runs for k in n.cpu))
    rows = []
    for c in res.cases:
        runs = res.node[c.key]
        rows.append([f"node, {c.key} lines", *(f"{_med([n.cpu.get(k, 0.0) for n in runs]):.2f}" for k in names)])
        floor = [f.engine_cpu for f in res.floor[c.key]]
        rows.append([f"floor, {c.key} lines", *("-" if k != "engine" else f"{_med(floor):.2f}" for k in names)])
    return table(rows, ("run", *names))


def _spans_table(res: Results) -> str:
    spans: list[str] = []
    for runs in res.node.values():
        for n in runs:
            spans += [s for s, _ in n.spans if s not in spans]
    rows = []
    for s in spans:
        cells = [s]
        for c in res.cases:
            xs = [v for n in res.node[c.key] for k, v in n.spans if k == s]
            cells.append(f"{_med(xs):.3f}" if xs else "-")
        rows.append(cells)
    return table(rows, ("span", *(f"{c.key} lines" for c in res.cases)))


def _profiled(key: str, n: NodeRun) -> str:
    cpu = ", ".join(f"{k} {v:.2f} s" for k, v in n.cpu.items())
    spans = "; ".join(f"{k} {v:.2f} s" for k, v in n.spans)
    return f"- {key} lines: {n.wall:.2f} s; CPU: {cpu}; spans: {spans}."


def _diagnosis(res: Results, d: Diagnosis) -> list[str]:
    missed = [k for k, v in res.missed.items() if v]
    if not (missed or d.profiled or d.imports or d.log_driver_floor):
        return []
    out = ["", f"#### Where the time and memory go (goals missed: {', '.join(missed) or 'none'})"]
    if d.note:
        out += ["", d.note]
    if d.log_driver_floor:
        driver = node_defaults()["log_driver"]
        out += ["", f"**The engine's log driver.** The floor run again with the node's log driver `{driver}`:"]
        for key, wall in d.log_driver_floor.items():
            floor = _med([f.wall for f in res.floor[key]])
            node = _med([n.wall for n in res.node[key]])
            out.append(
                f"- {key} lines: {wall:.2f} s against {floor:.2f} s with `none`: the driver costs "
                f"{wall - floor:+.2f} s of the node's {node - floor:+.2f} s over the floor."
            )
    if d.profiled:
        out += ["", "**Profiled runs** (one more node run of each case below, under py-spy):", ""]
        out += [_profiled(k, n) for k, n in d.profiled.items()]
    for proc, kinds in d.thread_cpu.items():
        rows = [[k, f"{u:.2f}", f"{s:.2f}"] for k, (u, s) in sorted(kinds.items(), key=lambda kv: -sum(kv[1]))]
        rows = [r for r in rows if r[1] != "0.00" or r[2] != "0.00"]
        out += [
            "",
            f"CPU of the {proc} by thread in the profiled run (s, from `/proc/<pid>/task/*/stat`; system = "
            "kernel time: socket reads, file writes, fsync):",
            "",
            table(rows, ("thread", "user", "system")),
        ]
    for program, mods in d.imports.items():
        rows = []
        prev = 0
        for mod, kib, new in mods:
            loaded = ", ".join(new[:12]) + (f" (+{len(new) - 12} more)" if len(new) > 12 else "")
            rows.append([f"`{mod}`", f"{(kib - prev) / 1024:+.1f}" if prev else _mib(kib), _mib(kib), loaded])
            prev = kib
        out += [
            "",
            f"What importing the {program}'s code costs (a fresh interpreter importing these in order; each row "
            "adds what that import brings beyond the rows above, MiB, and names the packages outside the standard "
            "library it loaded first):",
            "",
            table(rows, ("import", "added", "RSS", "packages it loaded")),
        ]
    for prof in d.profiles:
        out += ["", *profiling.profile_markdown(prof)]
    return out
