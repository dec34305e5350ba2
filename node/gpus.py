"""GPUs: which devices the node has, and which execution holds which of them.

Docker's device request by count (``--gpus 2``) gives every container devices 0..N-1, so two jobs
would share physical GPUs while the node counts them apart. The node therefore hands out specific
device ids: :class:`GpuPool` (used by the capacity manager, under its books) gives an admitted
execution ids nobody else holds and takes them back exactly once; the ids reach the container
through ``RunCommandRequest.gpu_devices`` (set by the node at admission, never by a requester) and
the container's device request (``device_ids``).

Detection, whichever is present: ``nvidia-smi`` (GPU UUIDs), the engine's CDI devices (Docker's
``DiscoveredDevices``, ids like ``nvidia.com/gpu=0``), else the operator's ``[capacity] gpu`` /
``gpu_devices``. Nothing found: no GPUs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["GpuPool", "choose_gpus", "detect_gpus", "gpus_from_engine_info", "parse_nvidia_smi"]

log = logging.getLogger(__name__)

NVIDIA_SMI_QUERY = ("--query-gpu=index,uuid", "--format=csv,noheader")


def parse_nvidia_smi(text: str) -> list[str]:
    """Device ids from ``nvidia-smi --query-gpu=index,uuid --format=csv,noheader``: the UUID (stable
    across reboots), else the index."""
    ids: list[str] = []
    for line in text.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if not fields or not fields[0]:
            continue
        uuid = fields[1] if len(fields) > 1 else ""
        ids.append(uuid if uuid.startswith("GPU-") else fields[0])
    return ids


def gpus_from_engine_info(info: Mapping[str, Any]) -> list[str]:
    """GPU devices the engine discovered through CDI (``DiscoveredDevices``, Docker 27+)."""
    ids: list[str] = []
    for device in info.get("DiscoveredDevices") or ():
        if not isinstance(device, Mapping):
            continue
        ident = str(device.get("ID") or "")
        kind = ident.split("=", 1)[0]
        cdi = str(device.get("Source", "")).lower() == "cdi"
        if cdi and kind.endswith("/gpu") and "=" in ident and not ident.endswith("=all"):
            ids.append(ident)
    return ids


NVIDIA_SMI_TIMEOUT = 10.0


async def _nvidia_smi() -> list[str] | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        proc = await asyncio.create_subprocess_exec(
            exe, *NVIDIA_SMI_QUERY, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
        )
    except OSError as exc:
        log.warning("cannot run nvidia-smi: %s", exc)
        return None
    try:
        async with asyncio.timeout(NVIDIA_SMI_TIMEOUT):
            out, _ = await proc.communicate()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        log.warning("nvidia-smi did not answer within %.0fs", NVIDIA_SMI_TIMEOUT)
        return None
    if proc.returncode != 0:
        log.warning("nvidia-smi failed with exit code %s", proc.returncode)
        return None
    return parse_nvidia_smi(out.decode(errors="replace"))


async def detect_gpus(engine_info: Mapping[str, Any]) -> list[str]:
    """The machine's GPU device ids (see the module doc); [] when there are none."""
    found = await _nvidia_smi()
    if found:
        return found
    return gpus_from_engine_info(engine_info)


def choose_gpus(count: int | None, devices: Sequence[str] | None, detected: Sequence[str]) -> list[str]:
    """The GPUs jobs are given: the operator's ``gpu_devices``; else ``count`` of them (the first
    ``count`` detected, or indices ``0``..``count-1`` when fewer were detected); else all detected."""
    if devices is not None:
        return list(devices)
    if count is None:
        return list(detected)
    if len(detected) >= count:
        return list(detected[:count])
    if detected:
        log.warning("capacity.gpu = %d but %d GPUs were detected; using indices 0..%d", count, len(detected), count - 1)
    return [str(i) for i in range(count)]


class GpuPool:
    """Which execution holds which device ids. Not thread-safe (one event loop, like the capacity books)."""

    def __init__(self, devices: Sequence[str] = ()) -> None:
        self._devices: tuple[str, ...] = tuple(dict.fromkeys(devices))
        self._held: dict[str, tuple[str, ...]] = {}

    @property
    def devices(self) -> tuple[str, ...]:
        return self._devices

    def free(self) -> list[str]:
        taken = {d for ids in self._held.values() for d in ids}
        return [d for d in self._devices if d not in taken]

    def set_devices(self, devices: Sequence[str]) -> None:
        """The node's devices changed (detected at start). Holders keep what they hold."""
        self._devices = tuple(dict.fromkeys(devices))

    def take(self, execution_id: str, count: int, prefer: Iterable[str] = ()) -> tuple[str, ...]:
        """``count`` free devices for the execution (``prefer``-red ones first, e.g. those a recovered
        container already uses). ValueError when it holds some already or too few are free: the
        capacity books make that impossible for a caller that asked them first."""
        if execution_id in self._held:
            raise ValueError(f"execution {execution_id!r} already holds GPUs {', '.join(self._held[execution_id])}")
        if count <= 0:
            return ()
        free = self.free()
        preferred = [d for d in prefer if d in free]
        chosen = (preferred + [d for d in free if d not in preferred])[:count]
        if len(chosen) < count:
            raise ValueError(f"only {len(free)} of {len(self._devices)} GPUs are free, {count} asked for")
        self._held[execution_id] = tuple(chosen)
        return self._held[execution_id]

    def give(self, execution_id: str) -> tuple[str, ...]:
        """Take back what the execution holds; idempotent (a second call gives back nothing)."""
        return self._held.pop(execution_id, ())

    def held(self, execution_id: str) -> tuple[str, ...]:
        return self._held.get(execution_id, ())
