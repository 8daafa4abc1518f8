"""PEM files: writing certificates and keys atomically, loading them back, passphrases.

A key file is mode 0600 from the moment it exists and loading refuses one that others can read
(the way ssh does); every file is replaced atomically (temporary file, fsync, rename), so a reader
sees the old or the new file, never half of one. Every failure is a :class:`PkiError` naming the
file. The directory lock that serialises writers of one PKI directory lives here as well.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from services.core.pki.issuing import (
    _is_ca,
)
from services.core.pki.keys import (
    IssuedCertificate,
    PkiError,
    PrivateKey,
    _key_matches,
)

_LOCK_FILE_NAME = ".pki.lock"


def write_pem_files(
    issued: IssuedCertificate,
    certificate_path: Path,
    key_path: Path,
    passphrase: bytes | None = None,
    chain: Sequence[x509.Certificate] = (),
) -> None:
    """Write the certificate (followed by ``chain``) and the private key as PEM files.

    Parent directories are created. Each file is replaced atomically: written to a
    temporary file in the same directory, fsynced, then renamed over the target, so a
    reader sees either the old or the new file, never a partial one. The key file has
    mode 0600 from the moment it exists; the certificate file gets 0644 (independent of
    the umask). The key is written first. With ``passphrase`` the key is encrypted.
    Raises PkiError naming the file when it cannot be written, or when both paths are
    the same file.
    """
    if os.path.abspath(certificate_path) == os.path.abspath(key_path):
        raise PkiError(f"{key_path}: certificate and key must be different files")
    key_data = issued.key_pem(passphrase)
    certificate_data = issued.certificate_pem() + b"".join(
        extra.public_bytes(serialization.Encoding.PEM) for extra in chain
    )
    _write_atomically(key_path, key_data, 0o600)
    _write_atomically(certificate_path, certificate_data, 0o644)


def load_certificate(path: Path) -> x509.Certificate:
    """Load the first PEM certificate in ``path`` (the leaf, when the file holds a chain).

    Raises PkiError naming the file when it is missing, unreadable or holds no PEM
    certificate.
    """
    return load_certificate_chain(path)[0]


def load_certificate_chain(path: Path) -> list[x509.Certificate]:
    """Load every PEM certificate in ``path`` in file order (at least one).

    Raises PkiError naming the file when it is missing, unreadable or holds no PEM
    certificate.
    """
    data = _read_file(path)
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError as error:
        raise PkiError(f"{path}: not a PEM certificate file ({error})") from None
    if not certificates:  # pragma: no cover - cryptography raises instead
        raise PkiError(f"{path}: contains no certificate")
    return certificates


def load_key(path: Path, passphrase: bytes | None = None, *, check_mode: bool = True) -> PrivateKey:
    """Load an RSA or EC private key from a PEM file (PKCS#8 or traditional format).

    With ``check_mode`` (the default) a key file that grants group or others any access
    (mode & 0o077) is refused, the way ssh refuses such keys; the mode is checked on the
    opened file, so it is the file actually read. Raises PkiError naming the file when it
    is missing, unreadable, not a regular file, too open, not a PEM key, encrypted
    without ``passphrase`` (or the passphrase is wrong), or of another key type.
    """
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as error:
        raise _os_error(path, error) from None
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            raise PkiError(f"{path}: not a regular file")
        mode = stat.S_IMODE(status.st_mode)
        if check_mode and mode & 0o077:
            access = "readable" if mode & 0o044 else "accessible"
            raise PkiError(f"{path}: mode {mode:04o} is {access} by others; chmod 600")
        with os.fdopen(descriptor, "rb", closefd=False) as file:
            data = file.read()
    except OSError as error:
        raise _os_error(path, error) from None
    finally:
        os.close(descriptor)
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except TypeError:
        if passphrase is None:
            raise PkiError(f"{path}: key is encrypted; a passphrase is needed") from None
        raise PkiError(f"{path}: key is not encrypted but a passphrase was given") from None
    except ValueError:
        raise PkiError(f"{path}: not a PEM private key, or wrong passphrase") from None
    except UnsupportedAlgorithm as error:
        raise PkiError(f"{path}: unsupported key ({error})") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise PkiError(f"{path}: {type(key).__name__} keys are not supported; use RSA or EC")
    return key


def load_issued(
    certificate_path: Path, key_path: Path, passphrase: bytes | None = None
) -> IssuedCertificate:
    """Load a certificate and its key (see load_certificate and load_key, mode checked).

    Raises PkiError as those do, and when the key does not belong to the certificate.
    """
    certificate = load_certificate(certificate_path)
    key = load_key(key_path, passphrase)
    if not _key_matches(certificate, key):
        raise PkiError(f"{key_path}: key does not belong to the certificate in {certificate_path}")
    return IssuedCertificate(certificate=certificate, key=key)


def load_certificate_authority(
    certificate_path: Path, key_path: Path, passphrase: bytes | None = None
) -> IssuedCertificate:
    """Load the provider RootCA (see load_issued: the key file must be mode 0600). Raises
    PkiError naming the file when it is not a CA certificate or the key does not belong to it.
    Expiry is checked when it issues (an expired CA still serves its last CRL)."""
    issued = load_issued(certificate_path, key_path, passphrase)
    if not _is_ca(issued.certificate):
        raise PkiError(
            f"{certificate_path}: not a CA certificate (basicConstraints CA:TRUE, keyCertSign)"
        )
    return issued


def read_passphrase(path: Path | None, environment_value: str | None) -> bytes | None:
    """A key passphrase from a file (first line, without its line end) or, without a file, an
    environment variable's value; None when neither is given. PkiError naming the file when it
    cannot be read or is empty."""
    if path is not None:
        text = _read_file(path).decode("utf-8", "replace").splitlines()
        if not text or not text[0]:
            raise PkiError(f"{path}: the passphrase file is empty")
        return text[0].encode("utf-8")
    if environment_value:
        return environment_value.encode("utf-8")
    return None


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise _os_error(path, error) from None


def _os_error(path: Path, error: OSError) -> PkiError:
    if isinstance(error, FileNotFoundError):
        return PkiError(f"{path}: file does not exist")
    if isinstance(error, PermissionError):
        return PkiError(f"{path}: permission denied")
    if isinstance(error, IsADirectoryError):
        return PkiError(f"{path}: is a directory, not a file")
    return PkiError(f"{path}: {error.strerror or error}")


def _make_directory(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PkiError(f"{directory}: cannot create directory: {error.strerror or error}") from None


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    directory = path.parent
    _make_directory(directory)
    try:
        # mkstemp creates the file with mode 0600, so a key is never readable by others,
        # not even for a moment.
        descriptor, temporary_name = tempfile.mkstemp(
            dir=directory, prefix=f".{path.name}.", suffix=".tmp"
        )
    except OSError as error:
        raise _os_error(path, error) from None
    try:
        with os.fdopen(descriptor, "wb") as file:
            os.fchmod(file.fileno(), mode)
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary_name, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            os.unlink(temporary_name)
        raise _os_error(path, error) from None
    # Make the rename itself durable.
    with contextlib.suppress(OSError):
        directory_descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory_descriptor)
        finally:
            os.close(directory_descriptor)


@contextlib.contextmanager
def _directory_lock(directory: Path) -> Iterator[None]:
    lock_path = directory / _LOCK_FILE_NAME
    try:
        descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as error:
        raise _os_error(lock_path, error) from None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # closing releases the lock
