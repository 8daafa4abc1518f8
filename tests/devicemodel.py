"""A model of an innovaphone device's update module as protocol.md describes it, for lifecycle
tests: it keeps what a real device keeps between polls and runs a reply line by line.

What it keeps (protocol.md §1, §2, §10): the stored UP1 URL and poll interval, provision mode,
the UPDATE/CHECK serial, the running and the loaded firmware and boot code (a loaded build runs
after the next reset), the maintenance window of the last ``mod cmd UP1 times`` against its own
clock (or no clock), the uptime since its last reset, its configuration (so it knows whether a
reset is needed), and every reply that made it reset.

How it runs a reply, line by line:
- ``mod cmd UP1 times [/allow h,h] [/initial n]`` replaces the window; if the device is then
  outside it (it has a clock, the hour is not allowed, and it has been up ``/initial`` minutes
  or longer; the unit is [NC]) it stops processing the file.
- ``mod cmd UP1 check <final> <serial>``: if the serial is the stored one, the rest is skipped;
  else it is stored.
- ``mod cmd UP0 prot|boot <url> <final> <build>``: unless the build runs or is loaded already,
  the file is fetched (HTTP 200 with a body) and loaded: it runs after the next reset.
- ``iresetn``: reset once the file is done, and only if needed (firmware loaded, or a
  configuration value other than UP1's changed since the last reset).
- ``config add|change UP1 /url|/poll``, ``mod cmd UP1 provision n``, ``config rem UP1
  /provision`` change the update module; ``mod cmd UP0 scfg <url>`` PUTs the configuration.
"""

from __future__ import annotations

import hashlib
import itertools
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import aiohttp


@dataclass
class Outcome:
    status: int
    text: str
    commands: list[str]
    # The lines the device ran before a maintenance window stopped it (None: not stopped).
    stopped_at: str | None = None
    reset: bool = False

    @property
    def changes(self) -> list[str]:
        """What the device was asked to change besides the lines of every poll (the backup
        line and the maintenance window)."""
        every_poll = ("mod cmd UP0 scfg ", "mod cmd UP1 times ")
        return [c for c in self.commands if not c.startswith(every_poll)]


@dataclass
class DeviceModel:
    mac: str
    hardware_id: str
    device_type: str
    url: str
    ca: Path
    certificate: tuple[Path, Path] | None = None
    ip: str = "192.0.2.50"
    # Factory-new (protocol.md §1): polls every minute.
    poll_minutes: int = 1
    provision: int = 0
    check: str = ""
    prot: str = "130000"
    boot: str = "140"
    # What the device reports as PROT (None: the running build; "" models an odd empty PROT).
    reported_prot: str | None = None
    loaded_prot: str | None = None
    loaded_boot: str | None = None
    allow: tuple[int, ...] | None = None
    initial: int | None = None
    # The device's local hour (None: no clock yet, e.g. factory-new without NTP).
    hour: int | None = None
    uptime_minutes: int = 0
    settings: dict[str, str] = field(default_factory=dict)
    changed_since_reset: bool = False
    resets: int = 0
    # (poll number, hash of the reply's commands) of every reset.
    reset_replies: list[tuple[int, str]] = field(default_factory=list)
    polls: int = 0
    uploads: list[int] = field(default_factory=list)
    firmware_fetches: list[int] = field(default_factory=list)
    config_text: str = "config change NTP0 /server 192.0.2.10\r\nvars create UPDATE/CHECK pb x\r\n"

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        if self.certificate is not None:
            context.load_cert_chain(str(self.certificate[0]), str(self.certificate[1]))
        return context

    def session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self.ssl_context(), force_close=True)
        )

    def expand(self, url: str) -> str:
        for placeholder, value in (
            ("#m", self.mac),
            ("#h", self.hardware_id),
            ("#t", self.device_type),
            ("#i", self.ip),
        ):
            url = url.replace(placeholder, value)
        return url

    @property
    def url_arguments(self) -> dict[str, str]:
        return dict(parse_qsl(urlsplit(self.url).query))

    def poll_url(self) -> str:
        prot = self.prot if self.reported_prot is None else self.reported_prot
        arguments = {
            "ver": f"13r2 sr7 {self.device_type}[{self.prot}], Bootcode[{self.boot}], HW[1]",
            "PROT": prot,
            "BOOT": self.boot,
            "CHECK": self.check,
        }
        url = self.expand(self.url)
        return url + ("&" if "?" in url else "?") + urlencode(arguments)

    async def poll(self) -> Outcome:
        """One poll: fetch the command file, run it, then wait the stored interval."""
        self.polls += 1
        async with self.session() as session:
            async with session.get(self.poll_url()) as response:
                text = await response.text()
                status = response.status
            outcome = Outcome(status, text, [])
            if status in (200, 404):
                await self.run(session, outcome)
        self.uptime_minutes += self.poll_minutes
        return outcome

    def outside_window(self) -> bool:
        if self.allow is None or self.hour is None:
            return False
        if self.initial is not None and self.uptime_minutes < self.initial:
            return False
        return self.hour not in self.allow

    async def run(self, session: aiohttp.ClientSession, outcome: Outcome) -> None:
        assert outcome.text == "" or outcome.text.endswith("\r\n"), "replies use CRLF"
        lines = [line for line in outcome.text.split("\r\n") if line and line[0] != "#"]
        reset_requested = False
        for line in lines:
            words = line.split()
            outcome.commands.append(line)
            if words[:4] == ["mod", "cmd", "UP1", "times"]:
                self._times(words[4:])
                if self.outside_window():
                    outcome.stopped_at = line
                    break
            elif words[:4] == ["mod", "cmd", "UP1", "check"]:
                if words[5] == self.check:
                    break
                self.check = words[5]
            elif words[:3] == ["mod", "cmd", "UP0"] and words[3] in ("prot", "boot"):
                await self._firmware(session, words[3], words[4], words[6])
            elif words[:4] == ["mod", "cmd", "UP0", "scfg"]:
                async with session.put(self.expand(words[4]), data=self.config_text) as reply:
                    self.uploads.append(reply.status)
            elif words[:4] == ["mod", "cmd", "UP1", "provision"]:
                self.provision = int(words[4])
            elif words[:4] == ["config", "rem", "UP1", "/provision"]:
                self.provision = 0
            elif words[:4] == ["config", "add", "UP1", "/url"]:
                self.url = unquote(words[4])
            elif words[:4] == ["config", "add", "UP1", "/poll"]:
                self.poll_minutes = int(words[4])
            elif words[0] == "config" and len(words) > 3 and words[1] in ("add", "change"):
                key, value = " ".join(words[2:4]), " ".join(words[4:])
                if words[2] != "UP1" and self.settings.get(key) != value:
                    self.settings[key] = value
                    self.changed_since_reset = True
            elif words[0] == "iresetn":
                reset_requested = True
        needed = (
            self.changed_since_reset or self.loaded_prot is not None or self.loaded_boot is not None
        )
        if reset_requested and needed:
            self._reset(outcome)

    def _times(self, options: list[str]) -> None:
        self.allow, self.initial = None, None
        for name, value in zip(options[::2], options[1::2], strict=False):
            if name == "/allow":
                self.allow = tuple(int(hour) for hour in value.split(","))
            elif name == "/initial":
                self.initial = int(value)

    async def _firmware(
        self, session: aiohttp.ClientSession, kind: str, url: str, build: str
    ) -> None:
        running, loaded = (
            (self.prot, self.loaded_prot) if kind == "prot" else (self.boot, self.loaded_boot)
        )
        if build in (running, loaded):
            return
        async with session.get(url) as response:
            body = await response.read()
            self.firmware_fetches.append(response.status)
        if response.status == 200 and body:
            if kind == "prot":
                self.loaded_prot = build
            else:
                self.loaded_boot = build

    def _reset(self, outcome: Outcome) -> None:
        outcome.reset = True
        self.resets += 1
        body = "\n".join(line for line in outcome.text.split("\r\n") if not line.startswith("#"))
        self.reset_replies.append((self.polls, hashlib.sha256(body.encode()).hexdigest()))
        if self.loaded_prot is not None:
            self.prot, self.loaded_prot = self.loaded_prot, None
        if self.loaded_boot is not None:
            self.boot, self.loaded_boot = self.loaded_boot, None
        self.changed_since_reset = False
        self.uptime_minutes = 0

    def converged(self, interval: int, update_url: str) -> bool:
        """Normal polling at ``interval``, provision off, the clean update URL."""
        return self.poll_minutes == interval and self.provision == 0 and self.url == update_url

    def assert_no_reset_loop(self) -> None:
        """No reply made the device reset on two polls in a row (a reply loop)."""
        for (poll, reply), (next_poll, next_reply) in itertools.pairwise(self.reset_replies):
            assert not (next_poll == poll + 1 and next_reply == reply), (
                f"{self.hardware_id}: the same reply reset the device on polls {poll} and "
                f"{next_poll}"
            )
