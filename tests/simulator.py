"""A simulated innovaphone device that polls like protocol.md §1-2 describes.

It expands ``#m``/``#h``/``#t``/``#i`` in its update URL, appends ``ver``/``PROT``/``BOOT``/
``CHECK`` to every poll, keeps the hash of a ``mod cmd UP1 check`` line as its CHECK, follows
``config add UP1 /url``, "installs" firmware named by ``mod cmd UP0 prot|boot`` (after fetching
the file from the server, as a device does) and records every command it ran. It talks real TLS
with its own client certificate.

For the certificate roll-out (protocol.md §9) it keeps device variables (``vars create/del/
read``), answers ``mod cmd X509 xml-info`` with its certificate chain, creates a real key and
PKCS#10 request on ``mod cmd X509 servercert-create`` (built with ``cryptography`` from the
command's /dn-cn, /san-dns, /san-ip), runs ``mod cmd UP0 scfg <url> ser nop /always <command>``
by PUTting the command's output, and installs a certificate pushed as
``X509/REQUESTRESPONSE/00000`` that matches its request key: from then on it uses it as its
client certificate.
"""

from __future__ import annotations

import ipaddress
import ssl
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlencode
from xml.sax.saxutils import quoteattr

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID


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
    # Device variables (protocol.md §9 keeps the request, its key and the response there).
    variables: dict[str, str] = field(default_factory=dict)
    # Where an installed certificate and key are written (a temporary directory if unset).
    state_dir: Path | None = None
    # Test hooks for the roll-out: put these names into the next request instead of the ones
    # the command asks for, or fail servercert-create with this error text.
    request_names: tuple[str, tuple[str, ...], tuple[str, ...]] | None = None
    request_error: str | None = None
    request_key: rsa.RSAPrivateKey | None = field(default=None, repr=False)
    installed: list[x509.Certificate] = field(default_factory=list)

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
                body = self.config.encode()
                if words[5:8] == ["ser", "nop", "/always"] and len(words) > 8:
                    # Run the (percent-encoded) command and upload its output instead.
                    body = self.command_output(unquote(" ".join(words[8:]))).encode()
                async with session.put(url, data=body) as response:
                    self.uploads.append((url, response.status))
            elif words[:4] == ["mod", "cmd", "X509", "servercert-create"]:
                self.create_request(words[4:])
            elif words[:2] == ["vars", "create"] and len(words) >= 5:
                self.variables[words[2]] = words[4]
                if words[2] == "X509/REQUESTRESPONSE/00000":
                    self.install_response()
            elif words[:2] == ["vars", "del"] and len(words) >= 3:
                self.variables.pop(words[2], None)
                if words[2] == "X509/REQUESTKEY":
                    self.request_key = None
            elif words[:4] == ["config", "add", "UP1", "/url"]:
                self.url = unquote(words[4])
            elif words[:4] == ["config", "add", "UP1", "/poll"]:
                self.poll_minutes = int(words[4])
            elif words[0] in ("iresetn", "ireset", "reset", "resetn"):
                self.resets += 1
        return commands

    # --- protocol.md §9 ----------------------------------------------------------------------

    def current_certificate(self) -> x509.Certificate | None:
        if self.certificate is None:
            return None
        return x509.load_pem_x509_certificate(self.certificate[0].read_bytes())

    def command_output(self, command: str) -> str:
        """What the device prints for a command run by ``scfg … ser nop /always``."""
        words = command.split()
        if words == ["mod", "cmd", "X509", "xml-info"]:
            return self.xml_info()
        if words[:2] == ["vars", "read"] and len(words) == 3:
            value = self.variables.get(words[2])
            return f"{words[2]} pb {value}\r\n" if value else ""
        return f"unknown command {command}\r\n"

    def xml_info(self) -> str:
        def common_name(name: x509.Name) -> str:
            attributes = name.get_attributes_for_oid(NameOID.COMMON_NAME)
            return str(attributes[0].value) if attributes else ""

        lines = ["<info>", "<servercert>"]
        certificate = self.current_certificate()
        if certificate is not None:
            lines.append(
                "<certificate subject_cn={} issuer_cn={} not_before={} not_after={}/>".format(
                    quoteattr(common_name(certificate.subject)),
                    quoteattr(common_name(certificate.issuer)),
                    quoteattr(f"{certificate.not_valid_before_utc:%Y-%m-%d %H:%M:%S}"),
                    quoteattr(f"{certificate.not_valid_after_utc:%Y-%m-%d %H:%M:%S}"),
                )
            )
        lines.append("</servercert>")
        if "X509/REQUEST" in self.variables:
            lines.append("<requests><request/></requests>")
        if self.variables.get("X509/REQUESTERROR"):
            lines.append(f"<request-error>{self.variables['X509/REQUESTERROR']}</request-error>")
        lines.append("</info>")
        return "\r\n".join(lines) + "\r\n"

    def create_request(self, arguments: list[str]) -> None:
        """``servercert-create /dn-cn … /san-dns … /san-ip … /key 2048-bit``: a real key and
        a real PKCS#10 request, kept as X509/REQUEST (hex DER) like the device does."""
        if self.request_error is not None:
            self.variables["X509/REQUESTERROR"] = self.request_error
            return
        options: dict[str, list[str]] = {}
        index = 0
        while index < len(arguments):
            word = arguments[index]
            value = ""
            if index + 1 < len(arguments) and not arguments[index + 1].startswith("/"):
                value = unquote(arguments[index + 1])
                index += 1
            options.setdefault(word, []).append(value)
            index += 1
        bits = int(options.get("/key", ["2048-bit"])[0].split("-")[0])
        common_name = options["/dn-cn"][0]
        dns_names = tuple(options.get("/san-dns", []))
        ip_addresses = tuple(options.get("/san-ip", []))
        if self.request_names is not None:
            common_name, dns_names, ip_addresses = self.request_names
        self.request_key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        subject = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
        if options.get("/dn-o"):
            subject.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, options["/dn-o"][0]))
        if options.get("/dn-c"):
            subject.insert(0, x509.NameAttribute(NameOID.COUNTRY_NAME, options["/dn-c"][0]))
        names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
        names += [x509.IPAddress(ipaddress.ip_address(address)) for address in ip_addresses]
        builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(subject))
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        request = builder.sign(self.request_key, hashes.SHA256())
        self.variables["X509/REQUEST"] = request.public_bytes(serialization.Encoding.DER).hex()
        self.variables["X509/REQUESTKEY"] = "(key)"

    def install_response(self) -> None:
        """Install the pushed certificate if it belongs to the request key (the device's rule);
        from now on it is the client certificate."""
        key = self.request_key
        if key is None:
            return
        certificate = x509.load_der_x509_certificate(
            bytes.fromhex(self.variables["X509/REQUESTRESPONSE/00000"])
        )
        public_key = certificate.public_key()
        if not isinstance(public_key, rsa.RSAPublicKey):
            return
        if public_key.public_numbers() != key.public_key().public_numbers():
            return
        directory = self.state_dir or Path(tempfile.mkdtemp(prefix="simulated-device-"))
        directory.mkdir(parents=True, exist_ok=True)
        certificate_path = directory / f"{self.hardware_id}-provider.pem"
        key_path = directory / f"{self.hardware_id}-provider.key"
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        key_path.chmod(0o600)
        certificate_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        self.certificate = (certificate_path, key_path)
        self.installed.append(certificate)
