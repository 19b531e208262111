"""The one reader for untrusted .zip files: image archives read in place and config bundles extracted.

Every member is checked before anything is read or written: its name (no absolute path, no '..', no drive,
no symbolic link), the number of members, and the sizes the archive declares. The bytes a member really
yields are counted while they are read, since a header can lie (a decompression bomb declares a small size).
An extraction that breaks a limit removes what it wrote.
"""

from __future__ import annotations

import shutil
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .errors import InputError

CHUNK = 1 << 20


@dataclass(frozen=True)
class ArchiveLimits:
    entries: int
    total_bytes: int
    file_bytes: int

    def describe(self) -> str:
        return (f"at most {self.entries} entries, {_size(self.total_bytes)} unpacked, "
                f"{_size(self.file_bytes)} per file")


def _size(count: int) -> str:
    return f"{count / 2**30:g} GiB" if count >= 2**30 else f"{count / 2**20:g} MiB"


def member_path(member: zipfile.ZipInfo, where: str) -> PurePosixPath:
    """The member's path inside the archive, or an InputError if it would leave it (or is a link)."""
    name = PurePosixPath(member.filename.replace("\\", "/"))
    if name.is_absolute() or ".." in name.parts or (name.parts and ":" in name.parts[0]):
        raise InputError(f"{where}: entry '{member.filename[:200]}' points outside the archive; refused")
    if stat.S_ISLNK(member.external_attr >> 16):
        raise InputError(f"{where}: entry '{member.filename[:200]}' is a symbolic link; refused")
    return name


def checked_members(archive: zipfile.ZipFile, where: str, limits: ArchiveLimits) -> list[zipfile.ZipInfo]:
    """The archive's members once its count, declared sizes and every name pass the checks."""
    members = archive.infolist()
    if len(members) > limits.entries:
        raise InputError(f"{where}: {len(members)} entries, more than the {limits.entries} allowed")
    if sum(m.file_size for m in members) > limits.total_bytes:
        raise InputError(f"{where}: unpacks to more than {_size(limits.total_bytes)} (decompression bomb?)")
    big = next((m for m in members if m.file_size > limits.file_bytes), None)
    if big is not None:
        raise InputError(f"{where}: entry '{big.filename[:200]}' unpacks to more than {_size(limits.file_bytes)}")
    for member in members:
        member_path(member, where)
    return members


def read_member(archive: zipfile.ZipFile, member: zipfile.ZipInfo, where: str, most: int) -> bytes:
    """A member's bytes, at most `most` of them whatever its header says."""
    try:
        with archive.open(member) as stream:
            data = stream.read(most + 1)
    except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError, EOFError) as err:
        raise InputError(f"{where}: cannot be read from the archive ({err.__class__.__name__})") from None
    if len(data) > most:
        raise InputError(f"{where}: unpacks to more than {_size(most)}")
    return data


def extract_zip(path: Path, target: Path, limits: ArchiveLimits, where: str) -> None:
    """Unpack `path` into the empty folder `target` within `limits`, counting the bytes really written;
    regular files and folders only. On any refusal the target is removed and nothing is left behind."""
    target.mkdir(parents=True, exist_ok=False)
    root = target.resolve()
    try:
        try:
            archive = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError, ValueError):
            raise InputError(f"{where}: not a readable zip") from None
        with archive:
            written = 0
            for member in checked_members(archive, where, limits):
                name = member_path(member, where)
                destination = root.joinpath(*name.parts)
                if not destination.resolve().is_relative_to(root):
                    raise InputError(f"{where}: entry '{member.filename[:200]}' points outside the archive; refused")
                if member.is_dir():
                    destination.mkdir(parents=True, exist_ok=True)
                    continue
                destination.parent.mkdir(parents=True, exist_ok=True)
                written += _copy_member(archive, member, destination, where, limits, written)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise


def _copy_member(archive: zipfile.ZipFile, member: zipfile.ZipInfo, destination: Path, where: str,
                 limits: ArchiveLimits, written_before: int) -> int:
    size = 0
    try:
        with archive.open(member) as source, open(destination, "xb") as sink:
            while chunk := source.read(CHUNK):
                size += len(chunk)
                if size > limits.file_bytes:
                    raise InputError(f"{where}: entry '{member.filename[:200]}' unpacks to more than "
                                     f"{_size(limits.file_bytes)}")
                if written_before + size > limits.total_bytes:
                    raise InputError(f"{where}: unpacks to more than {_size(limits.total_bytes)} "
                                     "(decompression bomb?)")
                sink.write(chunk)
    except FileExistsError:
        raise InputError(f"{where}: entry '{member.filename[:200]}' appears twice") from None
    except (zipfile.BadZipFile, RuntimeError, NotImplementedError, EOFError) as err:
        raise InputError(f"{where}: entry '{member.filename[:200]}' cannot be read ({err.__class__.__name__})") from None
    return size
