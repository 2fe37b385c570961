"""Fetch, verify and unpack dataset archives, never leaving half-written files behind.

Every file lands under its final name only once it is complete and verified: downloads stream to
a temp file in the same folder (same filesystem, so ``os.replace`` is atomic) while the MD5 is
computed, and archives are unpacked into a temp folder that is renamed into place at the end.
Two processes (e.g. DDP ranks) racing on the same root both succeed: the loser's copy is discarded.

``URLS`` and ``MD5`` are module-level dicts keyed by archive file name so that tests (and users
with a mirror) can override them.
"""
import gzip
import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib

from ..atomic import atomic_write

URLS = {
    "cifar-10-python.tar.gz": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "cifar-100-python.tar.gz": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    "tiny-imagenet-200.zip": "http://cs231n.stanford.edu/tiny-imagenet-200.zip",
}
MD5 = {
    "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
    "cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85",
    "tiny-imagenet-200.zip": "90528d7ca1a48142e341f4ef8d21d0de",
}

_CHUNK = 1 << 20


class DatasetNotFoundError(FileNotFoundError):
    """The dataset is neither extracted nor archived under the root, and could not be downloaded."""


class ChecksumError(ValueError):
    """An archive's MD5 differs from the expected one; the archive was not used."""


def md5sum(path: str) -> str:
    """Hex MD5 of a file, read in 1 MiB chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, dest: str, md5: str, timeout: float = 60.0) -> str:
    """Download ``url`` to ``dest`` (a file path), verifying its MD5; returns ``dest``.

    Raises ``ChecksumError`` (and leaves nothing at ``dest``) when the MD5 differs; network errors
    propagate as ``urllib.error.URLError``/``OSError``.
    """
    class _Mismatch(Exception):
        pass

    try:
        # The checksum is verified before the temporary file replaces `dest`: a bad download
        # raises inside the atomic write, which then discards it.
        with atomic_write(dest) as out, urllib.request.urlopen(url, timeout=timeout) as response:
            digest = hashlib.md5()
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                out.write(chunk)
                digest.update(chunk)
            got = digest.hexdigest()
            if got != md5:
                raise _Mismatch(got)
    except _Mismatch as mismatch:
        raise ChecksumError(
            f"downloaded {url} has MD5 {mismatch}, expected {md5}; it was discarded. The server or a "
            f"proxy served a different file: retry, or place a verified copy at {dest}."
        ) from None
    return dest


def extract(archive: str, root: str, folder: str) -> str:
    """Unpack ``archive`` (.tar.gz/.tgz/.tar or .zip) whose top-level folder is ``folder`` into ``root``.

    Returns ``root/folder``. The archive is unpacked into a temp folder under ``root`` and its
    ``folder`` renamed into place, so ``root/folder`` either does not exist or is complete.
    """
    final = os.path.join(root, folder)
    tmp = tempfile.mkdtemp(dir=root, prefix=f".{folder}.", suffix=".extracting")
    try:
        try:
            if archive.endswith(".zip"):
                with zipfile.ZipFile(archive) as zf:
                    zf.extractall(tmp)  # zipfile drops absolute paths and '..' components itself
            else:
                with tarfile.open(archive) as tf:
                    _safe_extract_tar(tf, tmp)
        except (tarfile.TarError, zipfile.BadZipFile, gzip.BadGzipFile, EOFError, zlib.error) as err:
            detail = " ".join(str(err).split())  # tarfile's reasons come on several lines
            raise ValueError(f"{archive} could not be unpacked ({type(err).__name__}: {detail}): it is truncated or "
                             "not the expected archive. Delete it and download it again") from None
        unpacked = os.path.join(tmp, folder)
        if not os.path.isdir(unpacked):
            raise ValueError(
                f"{archive} does not contain the folder {folder!r} at its top level "
                f"(found {sorted(os.listdir(tmp))}); is it the right archive?"
            )
        try:
            os.replace(unpacked, final)
        except OSError:
            if not os.path.isdir(final):  # a concurrent extraction that won the race is fine
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def ensure_extracted(root: str, folder: str, archive_name: str, download_ok: bool, title: str) -> str:
    """Return ``root/folder``, unpacking ``root/archive_name`` or downloading it first if needed.

    Order: an existing ``root/folder`` is used as is; else an existing archive is verified
    (``MD5[archive_name]``) and unpacked; else, when ``download_ok``, the archive is downloaded from
    ``URLS[archive_name]``, verified and unpacked. Otherwise ``DatasetNotFoundError`` says which
    file to put where. A wrong MD5 raises ``ChecksumError`` naming both checksums; nothing is
    unpacked.
    """
    root = os.path.abspath(os.path.expanduser(root))
    if os.path.exists(root) and not os.path.isdir(root):
        raise ValueError(f"the data root {root} is a file, not a folder; point data_root (root=, $CIARD_FAST_DATA) "
                         f"at the folder that holds {archive_name} or {folder}/")
    final = os.path.join(root, folder)
    if os.path.isdir(final):
        return final
    if os.path.exists(final):
        raise ValueError(f"{final} is a file where the extracted {title} folder should be; delete it so that "
                         f"{archive_name} is extracted there (or downloaded first)")
    archive = os.path.join(root, archive_name)
    expected = MD5[archive_name]
    if os.path.isdir(archive):
        raise ValueError(f"{archive} is a folder where the {title} archive should be; delete or move it, then put "
                         f"{archive_name} (from {URLS[archive_name]}) there")
    if not os.path.isfile(archive):
        how = (
            f"put {archive_name} (MD5 {expected}, from {URLS[archive_name]}) or its extracted "
            f"folder {folder}/ in {root} (or point root= / $CIARD_FAST_DATA at the folder that holds them)"
        )
        if not download_ok:
            raise DatasetNotFoundError(f"{title} not found and download=False: {how}.")
        try:
            download(URLS[archive_name], archive, expected)
        except (urllib.error.URLError, OSError) as err:
            raise DatasetNotFoundError(
                f"{title} not found in {root} and downloading {URLS[archive_name]} failed ({err}); "
                f"offline? {how}."
            ) from err
    else:
        got = md5sum(archive)
        if got != expected:
            raise ChecksumError(
                f"{archive} has MD5 {got}, expected {expected}: it is corrupt or another file, so it "
                f"was not extracted. Delete it and download {URLS[archive_name]} again."
            )
    return extract(archive, root, folder)


def _safe_extract_tar(tf: tarfile.TarFile, dest: str) -> None:
    if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 / 3.10.12 / 3.9.17
        tf.extractall(dest, filter="data")
        return
    # Older Pythons: refuse members that would land outside dest or are links/devices.
    dest_real = os.path.realpath(dest)
    for member in tf.getmembers():
        target = os.path.realpath(os.path.join(dest, member.name))
        if os.path.commonpath([dest_real, target]) != dest_real or not (member.isfile() or member.isdir()):
            raise ValueError(f"refusing to extract unsafe archive member {member.name!r}")
    tf.extractall(dest)

