"""The firmware store on this node's disk: ``<firmware_dir>/firm/<build>/<file>`` (seed layout).

This is ``update.firmware_source = "files"``; with ``"database"`` the files live in PostgreSQL
and every node serves them from a verified local cache (shared_firmware.py). Both are a
:class:`FirmwareSource` to the update service.

Files are added with ``pbxfront firmware add`` and recorded with their SHA-256 in the build's
``SHA256SUMS``. Devices may read only files listed there; names are checked against a strict
pattern before they become a path, and the resolved path must stay inside the store (no ``..``,
no absolute paths, no symlinks out).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

BUILD = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# Firmware files are .bin; the Android soft client loads an .apk (PHPUS <filenames>).
FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}\.(bin|apk)")
MANIFEST = "SHA256SUMS"


class FirmwareError(Exception):
    """A firmware name or file problem; the message names it."""


@dataclass(frozen=True)
class FirmwareFile:
    build: str
    name: str
    path: Path
    sha256: str
    size: int


def device_model(device_type: str) -> str:
    """protocol.md §10: the model as firmware names use it: ``#t`` in lower case, anything from
    the first ``-`` on dropped (``IP29-4`` -> ``ip29``)."""
    return device_type.lower().split("-", 1)[0]


def firmware_file_name(
    kind: str, device_type: str, overrides: Mapping[str, str] | None = None
) -> str:
    """protocol.md §10 (PHPUS's rule): an ``ip`` prefix is kept for the firmware and replaced by
    ``boot`` for the boot code (IP232 -> ``ip232.bin`` / ``boot232.bin``, IPVA -> ``ipva.bin`` /
    ``bootva.bin``); other models are ``<model>.bin`` / ``boot<model>.bin``. ``overrides`` maps
    a model to its own file name (``mypbxa`` -> ``mypbx.apk``)."""
    model = device_model(device_type)
    if overrides and model in overrides:
        return overrides[model]
    root, prefix = (model[2:], "ip") if model.startswith("ip") else (model, "")
    return f"{prefix}{root}.bin" if kind == "prot" else f"boot{root}.bin"


def model_names(items: Iterable[str]) -> dict[str, str]:
    """``("mypbxa=mypbx.apk", ...)`` (the update.firmware_names setting) as a mapping."""
    names: dict[str, str] = {}
    for item in items:
        model, _, name = item.partition("=")
        names[model.strip().lower()] = name.strip()
    return names


def check_build(build: str) -> str:
    if not BUILD.fullmatch(build) or ".." in build:
        raise FirmwareError(f"build {build!r}: letters, digits, . _ - only (e.g. 13r2sr7)")
    return build


def check_file_name(name: str) -> str:
    if not FILE.fullmatch(name):
        raise FirmwareError(f"file {name!r}: must look like ip232.bin, boot232.bin or mypbx.apk")
    return name


class FirmwareStore:
    """Blocking file access; the update service calls these in a thread."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.firm = root / "firm"
        # (build, file) pairs listed in the manifests, as of the last refresh().
        self._listed: frozenset[tuple[str, str]] = frozenset()

    def refresh(self) -> bool:
        """Re-read the manifests (blocking). True if the set of files changed."""
        listed = frozenset((item.build, item.name) for item in self.list())
        changed = listed != self._listed
        self._listed = listed
        return changed

    def listed(self, build: str, name: str) -> bool:
        """In memory, no disk access: was the file in the store at the last refresh()?"""
        return (build, name) in self._listed

    def _manifest(self, build: str) -> dict[str, str]:
        path = self.firm / build / MANIFEST
        try:
            text = path.read_text("ascii")
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError) as error:
            raise FirmwareError(f"{path}: unreadable: {error}") from None
        entries: dict[str, str] = {}
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 2 and re.fullmatch(r"[0-9a-f]{64}", parts[0]):
                entries[parts[1].lstrip("*")] = parts[0]
        return entries

    def find(self, build: str, name: str) -> FirmwareFile | None:
        """The listed file, or None; never a path outside the store."""
        try:
            check_build(build)
            check_file_name(name)
        except FirmwareError:
            return None
        sha256 = self._manifest(build).get(name)
        if sha256 is None:
            return None
        path = self.firm / build / name
        try:
            resolved = path.resolve(strict=True)
            firm = self.firm.resolve(strict=True)
        except OSError:
            return None
        if resolved.parent != firm / build or not resolved.is_file():
            return None
        return FirmwareFile(build, name, resolved, sha256, resolved.stat().st_size)

    def exists(self, build: str, name: str) -> bool:
        return self.find(build, name) is not None

    def add(self, source: Path, build: str, name: str) -> FirmwareFile:
        """Copy ``source`` into the store atomically and record its SHA-256."""
        check_build(build)
        check_file_name(name)
        if not source.is_file():
            raise FirmwareError(f"{source}: no such file")
        directory = self.firm / build
        directory.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with (
            source.open("rb") as reader,
            tempfile.NamedTemporaryFile(dir=directory, prefix=".incoming-", delete=False) as writer,
        ):
            try:
                while chunk := reader.read(1 << 20):
                    digest.update(chunk)
                    writer.write(chunk)
                writer.flush()
                os.fsync(writer.fileno())
            except BaseException:
                os.unlink(writer.name)
                raise
        os.chmod(writer.name, 0o644)
        os.replace(writer.name, directory / name)
        manifest = self._manifest(build)
        manifest[name] = digest.hexdigest()
        self._write_manifest(directory, manifest)
        found = self.find(build, name)
        assert found is not None
        return found

    def remove(self, build: str, name: str) -> bool:
        """Take a file out of the store (manifest first, so it is never listed without its
        file). False when it was not there."""
        check_build(build)
        check_file_name(name)
        directory = self.firm / build
        manifest = self._manifest(build)
        if manifest.pop(name, None) is None:
            return False
        self._write_manifest(directory, manifest)
        with contextlib.suppress(FileNotFoundError):
            (directory / name).unlink()
        return True

    def _write_manifest(self, directory: Path, manifest: Mapping[str, str]) -> None:
        text = "".join(f"{sha}  {file}\n" for file, sha in sorted(manifest.items()))
        with tempfile.NamedTemporaryFile(
            dir=directory, prefix=".manifest-", delete=False
        ) as manifest_writer:
            manifest_writer.write(text.encode("ascii"))
        os.chmod(manifest_writer.name, 0o644)
        os.replace(manifest_writer.name, directory / MANIFEST)

    def list(self) -> list[FirmwareFile]:
        files: list[FirmwareFile] = []
        if not self.firm.is_dir():
            return files
        for build_dir in sorted(self.firm.iterdir()):
            if not build_dir.is_dir() or not BUILD.fullmatch(build_dir.name):
                continue
            for name in sorted(self._manifest(build_dir.name)):
                found = self.find(build_dir.name, name)
                if found is not None:
                    files.append(found)
        return files


class FirmwareUnavailable(Exception):
    """The file is listed but cannot be served right now (not cached and the database is
    unreachable); the device tries again at its next poll."""


class FirmwareSource:
    """Where the update service serves firmware from: this node's store (:class:`LocalFirmware`)
    or the one in PostgreSQL (``shared_firmware.SharedFirmware``)."""

    where = ""

    def listed(self, build: str, name: str) -> bool:
        """In memory: was the file in the store at the last refresh()?"""
        raise NotImplementedError

    async def refresh(self) -> bool:
        """Re-read the list of files; True if it changed."""
        raise NotImplementedError

    async def find(self, build: str, name: str) -> FirmwareFile | None:
        """The file to serve, checked; None when it is not in the store. Raises
        :class:`FirmwareUnavailable` when it is listed but cannot be had now."""
        raise NotImplementedError

    async def close(self) -> None:
        """Finish (or stop) work in progress; the application is shutting down."""


class LocalFirmware(FirmwareSource):
    """``update.firmware_source = "files"``: the :class:`FirmwareStore` of this node."""

    def __init__(self, store: FirmwareStore) -> None:
        self.store = store
        self.where = str(store.firm)

    def listed(self, build: str, name: str) -> bool:
        return self.store.listed(build, name)

    async def refresh(self) -> bool:
        return await asyncio.to_thread(self.store.refresh)

    async def find(self, build: str, name: str) -> FirmwareFile | None:
        return await asyncio.to_thread(self.store.find, build, name)
