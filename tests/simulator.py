"""A simulated innovaphone device that polls like protocol.md §1-2 describes.

It expands ``#m``/``#h``/``#t``/``#i`` in its update URL, appends ``ver``/``PROT``/``BOOT``/
``CHECK`` to every poll, keeps the hash of a ``mod cmd UP1 check`` line as its CHECK, follows
``config add UP1 /url``, "installs" firmware named by ``mod cmd UP0 prot|boot`` (after fetching
the file from the server, as a device does) and records every command it ran. It talks real TLS
with its own client certificate.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlencode

import aiohttp


@dataclass
class PollResult:
    status: int
    text: str
    commands: list[str]

    @property
    def changes(self) -> list[str]:
        """The commands besides the backup line that goes out on every poll."""
        return [c for c in self.commands if not c.startswith("mod cmd UP0 scfg ")]


@dataclass
class SimulatedDevice:
    mac: str
    hardware_id: str
    device_type: str
    url: str
    ca: Path
    certificate: tuple[Path, Path] | None = None
    ip: str = "192.0.2.50"
    prot: str = "130000"
    boot: str = "140"
    check: str = ""
    poll_minutes: int = 15
    executed: list[str] = field(default_factory=list)
    firmware_fetched: list[tuple[str, int]] = field(default_factory=list)
    # The configuration this device uploads on `mod cmd UP0 scfg <url>` (protocol.md §5).
    config: str = "config change NTP0 /server 192.0.2.10\r\nvars create UPDATE/CHECK pb x\r\n"
    uploads: list[tuple[str, int]] = field(default_factory=list)
    resets: int = 0

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        if self.certificate is not None:
            context.load_cert_chain(str(self.certificate[0]), str(self.certificate[1]))
        return context

    def expanded_url(self) -> str:
        return self._expand(self.url)

    def _expand(self, url: str) -> str:
        for placeholder, value in (
            ("#m", self.mac),
            ("#h", self.hardware_id),
            ("#t", self.device_type),
            ("#i", self.ip),
        ):
            url = url.replace(placeholder, value)
        return url

    def poll_url(self) -> str:
        arguments = {
            "ver": f"13r2 sr7 {self.device_type}[{self.prot}], Bootcode[{self.boot}], HW[1]",
            "PROT": self.prot,
            "BOOT": self.boot,
            "CHECK": self.check,
        }
        url = self.expanded_url()
        return url + ("&" if "?" in url else "?") + urlencode(arguments)

    async def poll(self, session: aiohttp.ClientSession | None = None) -> PollResult:
        own = session is None
        session = session or aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self.ssl_context(), force_close=True)
        )
        try:
            async with session.get(self.poll_url()) as response:
                text = await response.text()
                status = response.status
            commands: list[str] = []
            if status == 200:
                commands = await self.run(session, text)
            return PollResult(status, text, commands)
        finally:
            if own:
                await session.close()

    async def run(self, session: aiohttp.ClientSession, text: str) -> list[str]:
        """Execute a reply the way the device does; return the non-comment lines."""
        assert text == "" or text.endswith("\r\n"), "replies use CRLF"
        commands = [line for line in text.split("\r\n") if line and not line.startswith("#")]
        for line in commands:
            words = line.split()
            self.executed.append(line)
            if words[:4] == ["mod", "cmd", "UP1", "check"]:
                self.check = words[5]
            elif words[:3] == ["mod", "cmd", "UP0"] and words[3] in ("prot", "boot"):
                url, build = words[4], words[6]
                async with session.get(url) as response:
                    body = await response.read()
                    self.firmware_fetched.append((url, response.status))
                if response.status == 200 and body:
                    if words[3] == "prot":
                        self.prot = build
                    else:
                        self.boot = build
            elif words[:4] == ["mod", "cmd", "UP0", "scfg"]:
                url = self._expand(words[4])
                async with session.put(url, data=self.config.encode()) as response:
                    self.uploads.append((url, response.status))
            elif words[:4] == ["config", "add", "UP1", "/url"]:
                self.url = unquote(words[4])
            elif words[:4] == ["config", "add", "UP1", "/poll"]:
                self.poll_minutes = int(words[4])
            elif words[0] in ("iresetn", "ireset", "reset", "resetn"):
                self.resets += 1
        return commands
