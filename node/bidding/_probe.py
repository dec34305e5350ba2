"""The operator's own bid check: a command (job JSON on stdin) or an HTTP endpoint (job JSON POSTed)."""

from __future__ import annotations

import asyncio
import contextlib
import http
import http.client
import json
import os
import signal
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence

from haddock.executor.quantity import format_bytes, format_duration
from haddock.executor.records import BidResult
from haddock.executor.sources import redact_url
from haddock.node.bidding._chain import MAX_REASON, BidContext, log

MAX_PROBE_REPLY = 64 * 1024


def _clip(text: str, most: int = MAX_REASON) -> str:
    return text if len(text) <= most else text[: most - 1] + "…"


def _probe_payload(ctx: BidContext) -> bytes:
    return (
        json.dumps(
            {
                "request": ctx.request.model_dump(mode="json"),
                "usage": ctx.usage.model_dump(mode="json"),
                "input_source_types": sorted(ctx.input_source_types),
                "inputs_local": ctx.inputs_local,
            }
        ).encode()
        + b"\n"
    )  # one line, so that a shell probe can `read` it


class ExternalProbeStrategy:
    """The operator's own bid check. Any failure of the probe is a "no" with a reason, never an exception."""

    name = "external-probe"

    def __init__(
        self,
        *,
        command: Sequence[str] | None = None,
        url: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 5.0,
    ) -> None:
        if (command is None) == (url is None):
            raise ValueError("an external bid probe needs exactly one of command or url")
        if command is not None and not command:
            raise ValueError("the bid probe command must not be empty")
        self.command = list(command) if command is not None else None
        self.url = url
        self.headers = dict(headers or {})
        self.timeout = timeout
        # Environment proxies are not used: a probe is the operator's own, usually local, service.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @property
    def described(self) -> str:
        if self.command is not None:
            return f"the bid probe command '{os.path.basename(self.command[0])}'"
        assert self.url is not None
        return f"the bid probe at {redact_url(self.url)}"

    async def bid(self, ctx: BidContext) -> BidResult:
        payload = _probe_payload(ctx)
        if self.command is not None:
            return await self._run_command(self.command, payload)
        return await self._post(payload)

    # -- command

    async def _run_command(self, argv: list[str], payload: bytes) -> BidResult:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,  # its own process group, so that a timeout kills its children too
            )
        except OSError as exc:
            return BidResult.no(f"{self.described} could not be started: {exc.strerror or exc}")
        try:
            stdout, stderr = await asyncio.wait_for(proc.communicate(payload), self.timeout)
        except TimeoutError:
            await _kill(proc)
            return BidResult.no(f"{self.described} did not answer within {format_duration(self.timeout)}")
        except BaseException:
            await _kill(proc)
            raise
        if stderr.strip():
            log.info("%s wrote to stderr: %s", self.described, _clip(stderr.decode("utf-8", "replace").strip()))
        lines = stdout.decode("utf-8", "replace").strip().splitlines()
        reason = _clip(lines[0].strip()) if lines else ""
        code = proc.returncode
        if code == 0:
            return BidResult.yes(reason or f"{self.described} accepted the job")
        if reason:
            return BidResult.no(reason)
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        return BidResult.no(f"{self.described} refused the job ({how})")

    # -- HTTP

    def _post_blocking(self, payload: bytes) -> tuple[int, bytes]:
        assert self.url is not None
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": "haddock-bid-probe",
            **self.headers,
        }
        req = urllib.request.Request(self.url, data=payload, headers=headers, method="POST")
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                return int(resp.status), resp.read(MAX_PROBE_REPLY + 1)
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, b""

    async def _post(self, payload: bytes) -> BidResult:
        try:
            status, body = await asyncio.wait_for(asyncio.to_thread(self._post_blocking, payload), self.timeout)
        except TimeoutError:
            return BidResult.no(f"{self.described} did not answer within {format_duration(self.timeout)}")
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                return BidResult.no(f"{self.described} did not answer within {format_duration(self.timeout)}")
            return BidResult.no(f"{self.described} could not be reached: {exc.reason}")
        except (OSError, http.client.HTTPException) as exc:
            return BidResult.no(f"{self.described} failed: {type(exc).__name__}: {exc}")
        if status >= 400:
            try:
                phrase = f" {http.HTTPStatus(status).phrase}"
            except ValueError:
                phrase = ""
            return BidResult.no(f"{self.described} answered HTTP {status}{phrase}")
        return self._parse_reply(body)

    def _not_a_bid(self, detail: str) -> BidResult:
        return BidResult.no(f"{self.described} answered something that is not a bid: {detail}")

    def _parse_reply(self, body: bytes) -> BidResult:
        if len(body) > MAX_PROBE_REPLY:
            return self._not_a_bid(f"a reply larger than {format_bytes(MAX_PROBE_REPLY)}")
        try:
            data = json.loads(body)
        except ValueError:
            snippet = body[:100].decode("utf-8", "replace")
            return self._not_a_bid(f"not JSON: {snippet!r}" if snippet.strip() else "an empty reply")
        if not isinstance(data, dict):
            return self._not_a_bid(f"expected a JSON object, got {_clip(json.dumps(data), 100)}")
        if "should_bid" not in data:
            return self._not_a_bid("'should_bid' is missing")
        should_bid = data["should_bid"]
        if not isinstance(should_bid, bool):
            return self._not_a_bid(f"'should_bid' must be true or false, got {_clip(json.dumps(should_bid), 100)}")
        if "reason" not in data:
            return self._not_a_bid("'reason' is missing")
        reason = data["reason"]
        if not isinstance(reason, str):
            return self._not_a_bid(f"'reason' must be a string, got {_clip(json.dumps(reason), 100)}")
        reason = _clip(reason.strip())
        if should_bid:
            return BidResult.yes(reason or f"{self.described} accepted the job")
        return BidResult.no(reason or f"{self.described} refused the job")


async def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proc.wait(), 5.0)
