"""systemd's notification protocol (sd_notify), written directly: one datagram per message.

`$NOTIFY_SOCKET` names a Unix datagram socket (a path, or an abstract name starting with '@').
Without it (not under systemd with Type=notify) every call is a no-op. Messages used:
READY=1 (stores open, deployed models warm), STATUS=<one line>, WATCHDOG=1 (the event loop is
alive; sent every WatchdogSec/2), RELOADING=1 + MONOTONIC_USEC (a SIGHUP reload), STOPPING=1.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time

import structlog

log = structlog.get_logger()


class Notifier:
    def __init__(self, address: str | None = None) -> None:
        self.address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        self._sock: socket.socket | None = None
        self.last_status = ""

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, *lines: str) -> bool:
        """Send one datagram of newline-separated KEY=VALUE lines; False when disabled or it failed."""
        if not self.address:
            return False
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(lines).encode(), target)
            return True
        except OSError as err:
            log.warning("sd_notify_failed", error=str(err))
            return False

    def ready(self, status: str) -> None:
        self.last_status = status
        self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.last_status = status
        self.send(f"STATUS={status}")

    def reloading(self) -> None:
        self.send("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval() -> float | None:
    """Half of systemd's WatchdogSec (from $WATCHDOG_USEC, when $WATCHDOG_PID is unset or this process), else None."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    with contextlib.suppress(ValueError):
        return int(usec) / 2e6
    return None


async def watchdog(notifier: Notifier, interval: float) -> None:
    """Ping the watchdog from the event loop: if the loop stalls, the pings stop and systemd restarts the service."""
    while True:
        notifier.send("WATCHDOG=1")
        await asyncio.sleep(interval)
