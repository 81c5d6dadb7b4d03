"""Input tensors handed to a Triton on the same host through system shared memory.

A segment's input tensor is megabytes (a batch of 960x544 frames as FP32 is 6 MB a frame). Sent in the
request, gRPC serializes it on the processor's event loop, holding the GIL throughout: about 40 ms for
19 MB on these machines, during which no other component of the process answers. Written into a
region that Triton has mapped, it is a numpy copy off the loop (numpy lets go of the GIL while it
copies) and the request only names the region.

Each backend keeps a few regions (SLOTS), grown to the largest tensor asked of them. A region's file
under /dev/shm is removed as soon as Triton has mapped it: both sides keep their mapping, and a
processor that is killed leaves no file behind. Triton keeps a dead processor's mappings until they
are unregistered, so the first region made sweeps away this host's regions of processes that are gone.

A Triton that cannot open the region (on another host or in another pod: Kubernetes gives each pod
its own /dev/shm), or a /dev/shm without room for it, and the tensors go in the requests from then
on, as the processor logs once. A Triton
that restarted has forgotten the regions: `lost()` says so from its error, and they are made again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import mmap
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tritonclient.grpc.aio as triton_grpc
from tritonclient.utils import InferenceServerException

from dayu.processor.triton_server import retryable
from dayu.runtime.logs import get_logger

log = get_logger(__name__)
SHM_DIR = "/dev/shm"
SLOTS = 4  # regions of one backend: as many tensors in flight to Triton, more wait for one
GRAIN = 1 << 20  # regions grow in whole MiB, so a slightly larger tensor does not make a new one
PREFIX = f"dayu-{socket.gethostname()}-"  # then the pid and a number: whose region it is
_numbers = itertools.count()


@dataclass
class Region:
    name: str  # Triton's name for it, and its file's (removed once Triton has mapped it)
    size: int
    memory: mmap.mmap
    epoch: int  # the pool's epoch it was registered in: one of an earlier epoch Triton has forgotten

    def array(self, shape: tuple[int, ...], dtype: type[np.generic]) -> np.ndarray:
        return np.ndarray(shape, dtype, buffer=self.memory)


class SharedInputs:
    """The regions of one Triton backend. take(nbytes) a region (None: send the tensor in the
    request), write the tensor into region.array(...), infer, then give() it back."""

    def __init__(self, client: Callable[[], triton_grpc.InferenceServerClient], address: str, timeout_s: float):
        self._client, self._address, self._timeout_s = client, address, timeout_s
        self._free: asyncio.Queue[Region | None] = asyncio.Queue()
        for _ in range(SLOTS):
            self._free.put_nowait(None)  # a slot without a region yet
        self._epoch = 0
        self._swept = False
        self._closed = False
        self.refused = ""  # why Triton cannot map this host's memory: the tensors go in the requests

    async def take(self, nbytes: int) -> Region | None:
        if self.refused or self._closed:
            return None
        region = await self._free.get()
        if self._closed:  # closing while this waited: the region is aclose's to unregister
            self._free.put_nowait(region)
            return None
        if region is not None and region.epoch == self._epoch and region.size >= nbytes:
            return region
        try:
            if region is not None:
                await self._drop(region)
                region = None
            return await self._make(nbytes)
        except InferenceServerException as error:
            if not retryable(error):  # Triton is there and cannot open it: not this host's Triton
                self._refuse(f"Triton at {self._address} cannot map this host's shared memory: {error.message()}")
            self._free.put_nowait(None)
            return None
        except OSError as error:  # no /dev/shm here, or no room in it
            self._refuse(f"no shared memory for a {nbytes} byte tensor in {SHM_DIR}: {error}")
            self._free.put_nowait(None)
            return None
        except BaseException:
            self._free.put_nowait(region)
            raise

    def _refuse(self, why: str) -> None:
        self.refused = why
        log.warning("tensors sent in the requests", reason=why)

    def give(self, region: Region) -> None:
        self._free.put_nowait(region)

    def lost(self, error: Exception) -> bool:
        """True when the error is Triton not knowing one of the regions (it restarted): every region
        is made again as it is next taken."""
        if PREFIX not in str(error):
            return False
        self._epoch += 1
        return True

    async def _make(self, nbytes: int) -> Region:
        client = self._client()
        if not self._swept:
            await self._sweep(client)
            self._swept = True
        size = -(-max(nbytes, 1) // GRAIN) * GRAIN
        name = f"{PREFIX}{os.getpid()}-{next(_numbers)}"
        memory = await asyncio.to_thread(_map_new, name, size)
        try:
            await client.register_system_shared_memory(name, f"/{name}", size, client_timeout=self._timeout_s)
        except BaseException:
            memory.close()
            raise
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{SHM_DIR}/{name}")
        return Region(name, size, memory, self._epoch)

    async def _drop(self, region: Region) -> None:
        with contextlib.suppress(InferenceServerException):  # a Triton that restarted knows it no more
            await self._client().unregister_system_shared_memory(region.name, client_timeout=self._timeout_s)
        with contextlib.suppress(BufferError):  # an array still over it: its memory goes with the array
            region.memory.close()

    async def _sweep(self, client: triton_grpc.InferenceServerClient) -> None:
        """Unregisters the regions this host's processes that are gone left in Triton."""
        status = await client.get_system_shared_memory_status(as_json=True, client_timeout=self._timeout_s)
        for name in status.get("regions", {}):
            if name.startswith(PREFIX) and not _alive(name.removeprefix(PREFIX).split("-")[0]):
                await client.unregister_system_shared_memory(name, client_timeout=self._timeout_s)
                log.info("shared memory of a process gone unregistered", region=name, address=self._address)

    async def aclose(self) -> None:
        """Unregisters the regions, those in flight once they are given back (one unregistered under
        its request would fail it), waiting for them as long as a call may take at most."""
        self._closed = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout_s
        for _ in range(SLOTS):
            try:
                region = await asyncio.wait_for(self._free.get(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                log.warning("shared memory in flight left registered", address=self._address)
                return
            if region is not None:
                with contextlib.suppress(Exception):
                    await self._drop(region)


def _map_new(name: str, size: int) -> mmap.mmap:
    """A new region's file, its memory reserved now: a /dev/shm too small for it (a container's is
    64 MB by default) fails here with ENOSPC, where a sparse file would kill the process with SIGBUS
    at the first write past what is there."""
    path = f"{SHM_DIR}/{name}"
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.posix_fallocate(fd, 0, size)
        return mmap.mmap(fd, size)
    except BaseException:
        os.unlink(path)
        raise
    finally:
        os.close(fd)


def _alive(pid: str) -> bool:
    if not pid.isdigit():
        return True  # not one of ours after all: leave it
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
