"""Bid strategies and chains: every answer, yes or no, with the exact reason a person reads."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from haddock.executor.quantity import GiB, MiB
from haddock.executor.records import BidResult
from haddock.executor.request import NetworkMode, Resources, RunCommandRequest
from haddock.executor.sources import redact_url
from haddock.node.bidding import (
    BidChain,
    BidContext,
    BiddingSettings,
    BidStrategy,
    ExternalProbeSettings,
    ExternalProbeStrategy,
    ImagePlatformSettings,
    ImagePlatformStrategy,
    ImagePolicySettings,
    ImagePolicyStrategy,
    NetworkingSettings,
    NetworkingStrategy,
    ResourceLimits,
    ResourceStrategy,
    StorageStrategy,
    TimeoutSettings,
    TimeoutStrategy,
    build_chain,
    image_matches,
    normalize_arch,
    platform_from_engine_info,
    platform_from_image_inspect,
)

CAPACITY = Resources(cpu=16, memory=16 * GiB, disk=100 * GiB, gpu=0)


def make_request(**overrides: Any) -> RunCommandRequest:
    data: dict[str, Any] = {
        "job_id": "job-1",
        "execution_id": "exec-1",
        "engine": {"image": "haddock-test/busybox:latest", "parameters": ["echo", "hi"]},
    }
    data.update(overrides)
    return RunCommandRequest.model_validate(data)


def make_ctx(
    request: RunCommandRequest | None = None,
    *,
    usage: Resources | None = None,
    capacity: Resources = CAPACITY,
    free: Resources | None = None,
    input_source_types: frozenset[str] = frozenset(),
    inputs_local: bool | None = None,
    **request_overrides: Any,
) -> BidContext:
    req = request or make_request(**request_overrides)
    return BidContext(
        request=req,
        usage=usage if usage is not None else req.resources,
        capacity=capacity,
        free=free if free is not None else capacity,
        input_source_types=input_source_types,
        inputs_local=inputs_local,
    )


# ---------------------------------------------------------------------------
# The chain
# ---------------------------------------------------------------------------


class Fixed:
    def __init__(self, name: str, result: BidResult) -> None:
        self.name = name
        self.result = result
        self.calls = 0

    async def bid(self, ctx: BidContext) -> BidResult:
        self.calls += 1
        return self.result


class Raises:
    name = "flaky"

    async def bid(self, ctx: BidContext) -> BidResult:
        raise RuntimeError("the lookup table is gone")


async def test_chain_first_no_wins_and_later_strategies_are_not_asked() -> None:
    first = Fixed("a", BidResult.yes("a is fine"))
    second = Fixed("b", BidResult.no("b says no"))
    third = Fixed("c", BidResult.no("c says no"))
    result = await BidChain([first, second, third]).bid(make_ctx())
    assert result == BidResult.no("b says no")
    assert (first.calls, second.calls, third.calls) == (1, 1, 0)


async def test_chain_all_yes_summarises_the_reasons() -> None:
    chain = BidChain([Fixed("a", BidResult.yes("a is fine")), Fixed("b", BidResult.yes("b is fine"))])
    assert await chain.bid(make_ctx()) == BidResult.yes("a is fine; b is fine")
    assert await BidChain([]).bid(make_ctx()) == BidResult.yes("no bid check objects to the job")


async def test_chain_turns_a_raising_strategy_into_a_no_bid_naming_it() -> None:
    later = Fixed("later", BidResult.yes("fine"))
    result = await BidChain([Fixed("a", BidResult.yes("fine")), Raises(), later]).bid(make_ctx())
    assert result == BidResult.no("the 'flaky' bid check failed: RuntimeError: the lookup table is gone")
    assert later.calls == 0


def test_builtin_strategies_satisfy_the_protocol() -> None:
    strategies: list[BidStrategy] = [
        NetworkingStrategy(),
        ImagePolicyStrategy(),
        StorageStrategy(installed=()),
        TimeoutStrategy(),
        ResourceStrategy(),
        ExternalProbeStrategy(command=["true"]),
    ]
    assert all(isinstance(s, BidStrategy) for s in strategies)
    assert len({s.name for s in strategies}) == len(strategies)


# ---------------------------------------------------------------------------
# 1. Networking
# ---------------------------------------------------------------------------


async def test_networking_reject_networked() -> None:
    s = NetworkingStrategy(reject_networked=True)
    assert await s.bid(make_ctx()) == BidResult.yes("this node accepts jobs with network mode 'none'")
    result = await s.bid(make_ctx(network={"mode": "bridge"}))
    assert result == BidResult.no("this node does not accept networked jobs")


async def test_networking_allowed_modes() -> None:
    s = NetworkingStrategy(allowed_modes={NetworkMode.NONE, NetworkMode.BRIDGE})
    assert (await s.bid(make_ctx(network={"mode": "bridge"}))).should_bid
    result = await s.bid(make_ctx(network={"mode": "host"}))
    assert result == BidResult.no("this node does not accept jobs with network mode 'host' (allowed: bridge, none)")


def test_networking_settings() -> None:
    settings = NetworkingSettings.model_validate({"allowed_modes": ["none", "bridge"]})
    assert settings.allowed_modes == frozenset({NetworkMode.NONE, NetworkMode.BRIDGE})
    with pytest.raises(ValidationError, match="not both"):
        NetworkingSettings(reject_networked=True, allowed_modes=frozenset({NetworkMode.HOST}))
    with pytest.raises(ValidationError):
        NetworkingSettings.model_validate({"allowed_modes": []})
    with pytest.raises(ValidationError):
        NetworkingSettings.model_validate({"allowed_modes": ["wifi"]})


# ---------------------------------------------------------------------------
# 2. Image policy (name normalization: tests/test_imageref.py)
# ---------------------------------------------------------------------------


async def test_image_policy_allow_list() -> None:
    s = ImagePolicyStrategy(allow=["docker.io/library/*", "127.0.0.1:5000/team/*"])
    assert await s.bid(make_ctx(engine={"image": "busybox:1.36"})) == BidResult.yes(
        "image 'busybox:1.36' (docker.io/library/busybox) is allowed on this node"
    )
    assert (await s.bid(make_ctx(engine={"image": "127.0.0.1:5000/team/app:1"}))).should_bid
    assert await s.bid(make_ctx(engine={"image": "ghcr.io/acme/tool"})) == BidResult.no(
        "image 'ghcr.io/acme/tool' is not allowed on this node (allowed: docker.io/library/*, 127.0.0.1:5000/team/*)"
    )
    assert await s.bid(make_ctx(engine={"image": "evil/busybox"})) == BidResult.no(
        "image 'evil/busybox' (docker.io/evil/busybox) is not allowed on this node "
        "(allowed: docker.io/library/*, 127.0.0.1:5000/team/*)"
    )


async def test_image_policy_deny_wins_over_allow() -> None:
    s = ImagePolicyStrategy(allow=["docker.io/*"], deny=["docker.io/library/python"])
    assert (await s.bid(make_ctx(engine={"image": "busybox"}))).should_bid
    assert await s.bid(make_ctx(engine={"image": "python:3.12"})) == BidResult.no(
        "image 'python:3.12' (docker.io/library/python) is denied on this node (matches 'docker.io/library/python')"
    )


async def test_image_policy_registry_case_does_not_escape_a_deny() -> None:
    s = ImagePolicyStrategy(deny=["evil.example/*"])
    assert not (await s.bid(make_ctx(engine={"image": "EVIL.example/app"}))).should_bid
    assert image_matches("EVIL.example/app", "evil.example/*")


async def test_image_policy_long_allow_list_is_shortened() -> None:
    s = ImagePolicyStrategy(allow=[f"r{i}.io/*" for i in range(7)])
    result = await s.bid(make_ctx(engine={"image": "ghcr.io/x"}))
    assert result.reason == (
        "image 'ghcr.io/x' is not allowed on this node "
        "(allowed: r0.io/*, r1.io/*, r2.io/*, r3.io/*, r4.io/* and 2 more)"
    )


def test_image_policy_patterns_are_checked() -> None:
    with pytest.raises(
        ValidationError, match=r"can never match: patterns match the full name, e.g. 'docker.io/library/busybox'"
    ):
        ImagePolicySettings(allow=["busybox"])
    with pytest.raises(ValidationError, match="has a tag or digest"):
        ImagePolicySettings(deny=["docker.io/library/busybox:1.36"])
    # repositories are lower case: such a pattern is refused, not read as another one that cannot match either
    with pytest.raises(
        ValidationError,
        match=r"'UPPERCASE' can never match: repository names are lower case \(e.g. 'docker.io/library/uppercase'\)",
    ):
        ImagePolicySettings(allow=["UPPERCASE"])
    with pytest.raises(ValidationError, match="repository names are lower case"):
        ImagePolicySettings(deny=["ghcr.io/Org/*"])
    # an upper-case first component is a registry host, as the engine reads it
    assert ImagePolicySettings(allow=["MyRegistry/app"]).allow == ["MyRegistry/app"]
    assert ImagePolicySettings(allow=["*", "*busybox", "localhost:5000/*"]).allow == [
        "*",
        "*busybox",
        "localhost:5000/*",
    ]


# ---------------------------------------------------------------------------
# 3. Image platform
# ---------------------------------------------------------------------------


class Lookup:
    def __init__(self, platforms: dict[str, tuple[str, str] | None], delay: float = 0.0) -> None:
        self.platforms = platforms
        self.delay = delay
        self.calls: list[str] = []

    async def __call__(self, image: str) -> tuple[str, str] | None:
        self.calls.append(image)
        if self.delay:
            await asyncio.sleep(self.delay)
        return self.platforms.get(image)


async def test_image_platform_match_and_mismatch() -> None:
    lookup = Lookup({"amd:1": ("linux", "amd64"), "arm:1": ("linux", "arm64")})
    s = ImagePlatformStrategy(lookup=lookup, engine_platform=("linux", "x86_64"))
    assert await s.bid(make_ctx(engine={"image": "amd:1"})) == BidResult.yes(
        "image 'amd:1' is built for linux/amd64, which this node runs"
    )
    assert await s.bid(make_ctx(engine={"image": "arm:1"})) == BidResult.no(
        "image 'arm:1' is built for linux/arm64, this node runs linux/amd64"
    )


async def test_image_platform_also_accept() -> None:
    lookup = Lookup({"arm:1": ("linux", "aarch64")})
    s = ImagePlatformStrategy(lookup=lookup, engine_platform=("linux", "amd64"), also_accept=["linux/arm64"])
    assert (await s.bid(make_ctx(engine={"image": "arm:1"}))).should_bid
    s = ImagePlatformStrategy(lookup=Lookup({"w:1": ("windows", "amd64")}), engine_platform=("linux", "amd64"))
    assert await s.bid(make_ctx(engine={"image": "w:1"})) == BidResult.no(
        "image 'w:1' is built for windows/amd64, this node runs linux/amd64"
    )


async def test_image_platform_unknown_image() -> None:
    s = ImagePlatformStrategy(lookup=Lookup({}), engine_platform=("linux", "amd64"))
    assert await s.bid(make_ctx(engine={"image": "new:1"})) == BidResult.yes(
        "image 'new:1': platform unknown until pulled"
    )
    s = ImagePlatformStrategy(lookup=Lookup({}), engine_platform=("linux", "amd64"), unknown="refuse")
    assert await s.bid(make_ctx(engine={"image": "new:1"})) == BidResult.no(
        "image 'new:1': platform unknown until pulled, and this node only bids on images whose platform it knows"
    )


async def test_image_platform_engine_found_lazily() -> None:
    answers: list[tuple[str, str] | None] = [None, ("linux", "x86_64")]
    calls = 0

    async def engine() -> tuple[str, str] | None:
        nonlocal calls
        calls += 1
        return answers.pop(0) if answers else ("linux", "arm64")

    s = ImagePlatformStrategy(lookup=Lookup({"a:1": ("linux", "amd64")}), engine_platform=engine, unknown="refuse")
    assert await s.bid(make_ctx(engine={"image": "a:1"})) == BidResult.no(
        "this node's platform is not known yet, and this node only bids on images whose platform it knows"
    )
    assert (await s.bid(make_ctx(engine={"image": "a:1"}))).should_bid
    assert (await s.bid(make_ctx(engine={"image": "a:1"}))).should_bid
    assert calls == 2  # known once found


async def test_image_platform_cache_ttl() -> None:
    now = [100.0]
    lookup = Lookup({"a:1": ("linux", "amd64")})
    s = ImagePlatformStrategy(lookup=lookup, engine_platform=("linux", "amd64"), cache_ttl=60, clock=lambda: now[0])
    for _ in range(3):
        assert (await s.bid(make_ctx(engine={"image": "a:1"}))).should_bid
    assert lookup.calls == ["a:1"]
    now[0] += 61
    lookup.platforms["a:1"] = ("linux", "arm64")  # the tag moved
    assert not (await s.bid(make_ctx(engine={"image": "a:1"}))).should_bid
    assert lookup.calls == ["a:1", "a:1"]
    # unknown images are not cached: once pulled, the platform is found
    assert (await s.bid(make_ctx(engine={"image": "b:1"}))).reason == "image 'b:1': platform unknown until pulled"
    lookup.platforms["b:1"] = ("linux", "amd64")
    assert (await s.bid(make_ctx(engine={"image": "b:1"}))).reason == (
        "image 'b:1' is built for linux/amd64, which this node runs"
    )


async def test_image_platform_concurrent_lookups_share_one() -> None:
    lookup = Lookup({"a:1": ("linux", "amd64")}, delay=0.05)
    s = ImagePlatformStrategy(lookup=lookup, engine_platform=("linux", "amd64"))
    results = await asyncio.gather(*(s.bid(make_ctx(engine={"image": "a:1"})) for _ in range(5)))
    assert all(r.should_bid for r in results)
    assert lookup.calls == ["a:1"]


def test_platform_helpers() -> None:
    assert normalize_arch("x86_64") == "amd64"
    assert normalize_arch("aarch64") == "arm64"
    assert normalize_arch("armv7l") == "arm"
    assert normalize_arch("s390x") == "s390x"
    assert platform_from_engine_info({"OSType": "linux", "Architecture": "x86_64"}) == ("linux", "amd64")
    assert platform_from_engine_info({}) is None
    assert platform_from_image_inspect({"Os": "linux", "Architecture": "arm64", "Variant": "v8"}) == ("linux", "arm64")
    assert platform_from_image_inspect({"Os": "", "Architecture": "arm64"}) is None
    assert ImagePlatformSettings(also_accept=["Linux/aarch64"]).also_accept == ["linux/arm64"]
    with pytest.raises(ValidationError, match="must be OS/ARCH"):
        ImagePlatformSettings(also_accept=["arm64"])


# ---------------------------------------------------------------------------
# 4. Storage
# ---------------------------------------------------------------------------


async def test_storage_types() -> None:
    s = StorageStrategy(installed={"url", "local", "inline"})
    assert await s.bid(make_ctx()) == BidResult.yes("the job has no inputs")
    assert await s.bid(make_ctx(input_source_types=frozenset({"url", "inline"}))) == BidResult.yes(
        "this node can read all of the job's inputs"
    )
    assert await s.bid(make_ctx(input_source_types=frozenset({"url", "s3"}))) == BidResult.no(
        "this node cannot read inputs of type 's3'"
    )
    assert await s.bid(make_ctx(input_source_types=frozenset({"s3", "ipfs"}))) == BidResult.no(
        "this node cannot read inputs of types 'ipfs', 's3'"
    )


async def test_storage_require_local() -> None:
    s = StorageStrategy(installed={"url"}, require_local=True)
    url = frozenset({"url"})
    assert await s.bid(make_ctx(input_source_types=url, inputs_local=True)) == BidResult.yes(
        "the job's inputs are already on this node"
    )
    assert await s.bid(make_ctx(input_source_types=url, inputs_local=False)) == BidResult.no(
        "this node only runs jobs whose inputs are already on it"
    )
    assert await s.bid(make_ctx(input_source_types=url)) == BidResult.no(
        "this node only runs jobs whose inputs are already on it, and cannot tell whether this job's are"
    )
    assert (await s.bid(make_ctx())).should_bid  # no inputs at all


# ---------------------------------------------------------------------------
# 5. Timeout
# ---------------------------------------------------------------------------


async def test_timeout_limits() -> None:
    s = TimeoutStrategy(min_timeout=60, max_timeout=3600)
    assert await s.bid(make_ctx(timeout="5m")) == BidResult.yes("the job's timeout of 5m is within this node's limits")
    assert await s.bid(make_ctx()) == BidResult.no("this node requires a timeout of at most 1h")
    assert await s.bid(make_ctx(timeout="2h")) == BidResult.no(
        "this node allows a timeout of at most 1h, the job asks for 2h"
    )
    assert await s.bid(make_ctx(timeout="30s")) == BidResult.no(
        "this node requires a timeout of at least 1m, the job asks for 30s"
    )
    assert await TimeoutStrategy(min_timeout=60).bid(make_ctx()) == BidResult.yes(
        "the job has no timeout, which this node allows"
    )


def test_timeout_settings() -> None:
    assert TimeoutSettings.model_validate({"max_timeout": "1h30m"}).max_timeout == 5400
    with pytest.raises(ValidationError, match="min_timeout 2h is longer than max_timeout 1h"):
        TimeoutSettings.model_validate({"min_timeout": "2h", "max_timeout": "1h"})


# ---------------------------------------------------------------------------
# 6. Resources
# ---------------------------------------------------------------------------


async def test_resources_fit() -> None:
    s = ResourceStrategy(max_per_job=ResourceLimits(cpu=4, memory=8 * GiB))
    usage = Resources(cpu=2, memory=4 * GiB, disk=GiB)
    assert await s.bid(make_ctx(usage=usage)) == BidResult.yes("this node has the resources the job asks for")


async def test_resources_insufficient_free() -> None:
    s = ResourceStrategy()
    free = Resources(cpu=2.5, memory=int(3.2 * GiB), disk=50 * GiB)
    assert await s.bid(make_ctx(usage=Resources(memory=8 * GiB), free=free)) == BidResult.no(
        "insufficient memory: requested 8Gi, free 3.2Gi of 16Gi"
    )
    assert await s.bid(make_ctx(usage=Resources(cpu=4), free=free)) == BidResult.no(
        "insufficient CPU: requested 4, free 2500m of 16"
    )
    assert await s.bid(make_ctx(usage=Resources(disk=60 * GiB), free=free)) == BidResult.no(
        "insufficient disk: requested 60Gi, free 50Gi of 100Gi"
    )
    assert await s.bid(make_ctx(usage=Resources(memory=32 * GiB), free=free)) == BidResult.no(
        "insufficient memory: requested 32Gi, this node has 16Gi for jobs"
    )
    assert await s.bid(make_ctx(usage=Resources(gpu=1))) == BidResult.no(
        "insufficient GPUs: requested 1, this node has none"
    )
    gpus = Resources(cpu=16, memory=16 * GiB, gpu=2)
    assert await s.bid(make_ctx(usage=Resources(gpu=2), capacity=gpus, free=Resources(gpu=1))) == BidResult.no(
        "insufficient GPUs: requested 2, free 1 of 2"
    )
    # capacity not known (zero): not checked; a job without limits counts as nothing
    assert (await s.bid(make_ctx(usage=Resources(memory=8 * GiB), capacity=Resources(), free=Resources()))).should_bid
    assert (await s.bid(make_ctx(usage=Resources(), free=Resources()))).should_bid


async def test_resources_per_job_limits() -> None:
    s = ResourceStrategy(max_per_job=ResourceLimits(cpu=4, memory=8 * GiB, disk=10 * GiB, gpu=1))
    assert await s.bid(make_ctx(usage=Resources(cpu=8, memory=GiB, disk=GiB))) == BidResult.no(
        "this node allows at most 4 CPUs per job, requested 8"
    )
    assert await s.bid(make_ctx(usage=Resources(cpu=1, memory=9 * GiB, disk=GiB))) == BidResult.no(
        "this node allows at most 8Gi of memory per job, requested 9Gi"
    )
    assert await s.bid(make_ctx(usage=Resources(cpu=1, memory=512 * MiB))) == BidResult.no(
        "this node requires jobs to set a disk limit of at most 10Gi"
    )
    assert await s.bid(make_ctx(usage=Resources(memory=GiB, disk=GiB))) == BidResult.no(
        "this node requires jobs to set a CPU limit of at most 4 CPUs"
    )
    assert await s.bid(make_ctx(usage=Resources(cpu=1, memory=GiB, disk=GiB, gpu=2))) == BidResult.no(
        "this node allows at most 1 GPU per job, requested 2"
    )
    no_gpu = ResourceStrategy(max_per_job=ResourceLimits(gpu=0))
    assert await no_gpu.bid(make_ctx(usage=Resources(gpu=1))) == BidResult.no(
        "this node does not run GPU jobs, requested 1 GPU"
    )


# ---------------------------------------------------------------------------
# 7. External probe: command
# ---------------------------------------------------------------------------


async def test_probe_command_refuses_with_its_first_line() -> None:
    s = ExternalProbeStrategy(command=["sh", "-c", 'read x; echo "too busy"; echo more; exit 1'])
    assert await s.bid(make_ctx()) == BidResult.no("too busy")


async def test_probe_command_bids() -> None:
    s = ExternalProbeStrategy(command=["sh", "-c", 'read x; echo "  plenty of room  "'])
    assert await s.bid(make_ctx()) == BidResult.yes("plenty of room")
    s = ExternalProbeStrategy(command=["true"])
    assert await s.bid(make_ctx()) == BidResult.yes("the bid probe command 'true' accepted the job")


async def test_probe_command_without_output() -> None:
    s = ExternalProbeStrategy(command=["sh", "-c", "exit 3"])
    assert await s.bid(make_ctx()) == BidResult.no("the bid probe command 'sh' refused the job (exit code 3)")
    s = ExternalProbeStrategy(command=["sh", "-c", "kill -9 $$"])
    assert await s.bid(make_ctx()) == BidResult.no("the bid probe command 'sh' refused the job (killed by signal 9)")


async def test_probe_command_gets_the_job_on_stdin(tmp_path: Path) -> None:
    out = tmp_path / "job.json"
    s = ExternalProbeStrategy(command=["sh", "-c", 'cat > "$0"', str(out)])
    ctx = make_ctx(
        usage=Resources(cpu=1, memory=64 * MiB, disk=2 * GiB),
        input_source_types=frozenset({"url"}),
        inputs_local=False,
        resources={"cpu": "1", "memory": "64Mi"},
        timeout="1m",
    )
    assert (await s.bid(ctx)).should_bid
    job = json.loads(out.read_text())
    assert job["request"] == ctx.request.model_dump(mode="json")
    assert RunCommandRequest.model_validate(job["request"]) == ctx.request
    assert job["usage"] == {"cpu": 1.0, "memory": 64 * MiB, "disk": 2 * GiB, "gpu": 0}
    assert job["input_source_types"] == ["url"]
    assert job["inputs_local"] is False


async def test_probe_command_timeout_kills_it_and_its_children() -> None:
    s = ExternalProbeStrategy(command=["sh", "-c", "sleep 30 & sleep 30; echo never"], timeout=0.3)
    started = time.monotonic()
    assert await s.bid(make_ctx()) == BidResult.no("the bid probe command 'sh' did not answer within 300ms")
    assert time.monotonic() - started < 3


async def test_probe_command_that_cannot_start() -> None:
    s = ExternalProbeStrategy(command=["/nonexistent/haddock-probe"])
    assert await s.bid(make_ctx()) == BidResult.no(
        "the bid probe command 'haddock-probe' could not be started: No such file or directory"
    )


async def test_probe_command_that_ignores_stdin() -> None:
    s = ExternalProbeStrategy(command=["sh", "-c", "exec 0<&-; echo fine"])
    assert await s.bid(make_ctx()) == BidResult.yes("fine")


# ---------------------------------------------------------------------------
# 7. External probe: HTTP
# ---------------------------------------------------------------------------


class _ProbeHandler(BaseHTTPRequestHandler):
    received: list[tuple[str, dict[str, str], Any]] = []

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _reply(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass  # the client gave up (the timeout test)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length))
        self.received.append((self.path, dict(self.headers), body))
        path = self.path.split("?")[0]
        if path == "/yes":
            self._reply(200, json.dumps({"should_bid": True, "reason": "room for it"}).encode())
        elif path == "/no":
            self._reply(200, json.dumps({"should_bid": False, "reason": "maintenance window"}).encode())
        elif path == "/500":
            self._reply(500, b'{"should_bid": true, "reason": "ignored"}')
        elif path == "/invalid":
            self._reply(200, b"<html>hello</html>", "text/html")
        elif path == "/missing":
            self._reply(200, b'{"should_bid": true}')
        elif path == "/missing-bid":
            self._reply(200, b'{"reason": "what"}')
        elif path == "/not-bool":
            self._reply(200, b'{"should_bid": "yes", "reason": "sure"}')
        elif path == "/list":
            self._reply(200, b"[true]")
        elif path == "/empty":
            self._reply(200, b"")
        elif path == "/slow":
            time.sleep(1.0)
            self._reply(200, b'{"should_bid": true, "reason": "late"}')
        else:
            self._reply(404, b"{}")


@pytest.fixture(scope="module")
def probe_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ProbeHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


async def test_probe_http_bid_and_no(probe_server: str) -> None:
    yes = ExternalProbeStrategy(url=f"{probe_server}/yes", headers={"Authorization": "Bearer s3cret"})
    assert await yes.bid(make_ctx()) == BidResult.yes("room for it")
    path, headers, body = _ProbeHandler.received[-1]
    assert path == "/yes"
    assert headers["Authorization"] == "Bearer s3cret"
    assert headers["Content-Type"] == "application/json"
    assert body["request"]["execution_id"] == "exec-1"
    assert body["usage"] == {"cpu": 0.0, "memory": 0, "disk": 0, "gpu": 0}
    no = ExternalProbeStrategy(url=f"{probe_server}/no")
    assert await no.bid(make_ctx()) == BidResult.no("maintenance window")


@pytest.mark.parametrize(
    ("path", "detail"),
    [
        ("/500", None),
        ("/invalid", "not JSON: '<html>hello</html>'"),
        ("/missing", "'reason' is missing"),
        ("/missing-bid", "'should_bid' is missing"),
        ("/not-bool", """'should_bid' must be true or false, got "yes\""""),
        ("/list", "expected a JSON object, got [true]"),
        ("/empty", "an empty reply"),
    ],
)
async def test_probe_http_bad_answers_are_no_bids(probe_server: str, path: str, detail: str | None) -> None:
    url = f"{probe_server}{path}"
    result = await ExternalProbeStrategy(url=url).bid(make_ctx())
    if detail is None:
        assert result == BidResult.no(f"the bid probe at {url} answered HTTP 500 Internal Server Error")
    else:
        assert result == BidResult.no(f"the bid probe at {url} answered something that is not a bid: {detail}")


async def test_probe_http_timeout(probe_server: str) -> None:
    s = ExternalProbeStrategy(url=f"{probe_server}/slow", timeout=0.2)
    started = time.monotonic()
    assert await s.bid(make_ctx()) == BidResult.no(f"the bid probe at {probe_server}/slow did not answer within 200ms")
    assert time.monotonic() - started < 1.0


async def test_probe_http_unreachable_and_secrets_not_shown(probe_server: str) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    s = ExternalProbeStrategy(url=f"http://user:pw@127.0.0.1:{port}/bid?token=abc")
    result = await s.bid(make_ctx())
    assert not result.should_bid
    assert result.reason.startswith(f"the bid probe at http://127.0.0.1:{port}/bid could not be reached: ")
    assert "pw" not in result.reason and "abc" not in result.reason
    assert redact_url("https://u:p@h.example:8443/x?y=1#z") == "https://h.example:8443/x"


def test_probe_settings() -> None:
    assert ExternalProbeSettings.model_validate({"command": ["probe"], "timeout": "2s"}).timeout == 2
    with pytest.raises(ValidationError, match="exactly one of command or url"):
        ExternalProbeSettings.model_validate({})
    with pytest.raises(ValidationError, match="exactly one of command or url"):
        ExternalProbeSettings.model_validate({"command": ["probe"], "url": "http://x/"})
    with pytest.raises(ValidationError, match="must be an http:// or https:// URL"):
        ExternalProbeSettings.model_validate({"url": "ftp://x/"})
    with pytest.raises(ValidationError):
        ExternalProbeSettings.model_validate({"command": []})


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://x:99999/", "Port out of range"),
        ("http:///bid", "has no host"),
        ("http://probe.example/ bid", "spaces or control characters"),
        ("http://" + "p" * 9000, "longer than"),
    ],
)
def test_probe_url_is_checked_as_every_http_url(url: str, why: str) -> None:
    with pytest.raises(ValidationError, match=why):
        ExternalProbeSettings.model_validate({"url": url})


# ---------------------------------------------------------------------------
# Settings and assembly
# ---------------------------------------------------------------------------

TOML = """
[bidding.networking]
allowed_modes = ["none", "bridge"]

[bidding.image_policy]
allow = ["docker.io/library/*", "docker.io/haddock-test/*"]
deny = ["docker.io/library/python"]

[bidding.image_platform]
unknown = "refuse"
cache_ttl = "1m"

[bidding.storage]
require_local = false

[bidding.timeout]
max_timeout = "1h"

[bidding.resources.max_per_job]
cpu = "4"
memory = "8Gi"

[bidding.external_probe]
command = ["sh", "-c", "read x; echo 'probe says yes'"]
timeout = "2s"
"""


async def _amd64(image: str) -> tuple[str, str] | None:
    return ("linux", "amd64")


async def test_build_chain_from_toml() -> None:
    settings = BiddingSettings.model_validate(tomllib.loads(TOML)["bidding"])
    chains = build_chain(
        settings, image_platform_lookup=_amd64, storage_types_installed={"url"}, engine_platform=("linux", "x86_64")
    )
    assert chains.semantic.names == [
        "networking",
        "timeout",
        "image-policy",
        "storage",
        "image-platform",
        "external-probe",
    ]
    assert chains.resource.names == ["resources"]
    ok = make_ctx(timeout="10m", usage=Resources(cpu=1, memory=GiB))
    result = await chains.bid(ok)
    assert result.should_bid
    assert result.reason.endswith("probe says yes; this node has the resources the job asks for")
    assert await chains.bid(make_ctx(usage=Resources(cpu=1, memory=GiB))) == BidResult.no(
        "this node requires a timeout of at most 1h"
    )
    assert await chains.bid(make_ctx(timeout="10m", usage=Resources(cpu=8, memory=GiB))) == BidResult.no(
        "this node allows at most 4 CPUs per job, requested 8"
    )


def test_build_chain_defaults_and_switches() -> None:
    defaults = BiddingSettings()
    chains = build_chain(
        defaults, image_platform_lookup=_amd64, storage_types_installed=(), engine_platform=("linux", "amd64")
    )
    assert chains.semantic.names == ["storage", "image-platform"]
    assert chains.resource.names == ["resources"]
    with pytest.raises(ValueError, match=r"bidding\.image_platform is on"):
        build_chain(defaults, image_platform_lookup=None, storage_types_installed=())
    off = BiddingSettings.model_validate(
        {"image_platform": {"enabled": False}, "storage": {"enabled": False}, "resources": {"enabled": False}}
    )
    chains = build_chain(off, image_platform_lookup=None, storage_types_installed=())
    assert chains.semantic.names == [] and chains.resource.names == []
    with pytest.raises(ValidationError):
        BiddingSettings.model_validate({"networkin": {}})
    with pytest.raises(ValidationError):
        BiddingSettings.model_validate({"timeout": {"max": "1h"}})
