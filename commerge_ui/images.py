"""Image samples: files named in a sample list, a folder or a .zip in class-subfolder layout.

A .zip is read in memory, member by member, and never extracted: no path inside it can reach the disk
(zip-slip), paths that try to leave the archive are refused anyway, and the sizes it declares and the bytes
it really yields are both capped (decompression bombs).
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from .archives import ArchiveLimits, checked_members, member_path, read_member
from .errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
MAX_IMAGE_BYTES = 32 * 2**20
MAX_IMAGE_PIXELS = 64 * 2**20  # PIL warns at 89 Mpx and refuses at twice that; we refuse at 64 Mpx
MAX_ZIP_MEMBERS = 200_000
MAX_ZIP_UNCOMPRESSED = 4 * 2**30


@dataclass(frozen=True)
class ImageRef:
    """An image not read yet: `read()` returns its checked bytes; `where` names it in messages."""

    where: str
    label: str | int | None
    read: Callable[[], bytes]


def check_image(data: bytes, where: str) -> bytes:
    """The bytes of a decodable image of sane size, or an InputError naming the file."""
    if len(data) > MAX_IMAGE_BYTES:
        raise InputError(f"{where}: image file is larger than {MAX_IMAGE_BYTES // 2**20} MiB")
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise InputError(f"{where}: image has {image.width}×{image.height} pixels, more than "
                                 f"{MAX_IMAGE_PIXELS // 2**20} Mpx (decompression bomb?)")
            image.verify()
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as err:
        raise InputError(f"{where}: not a readable image ({err.__class__.__name__})") from None
    return data


def open_rgb(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def image_file(path: Path, label: str | int | None, where: str | None = None) -> ImageRef:
    where = where or str(path)

    def read() -> bytes:
        try:
            if not path.is_file():
                raise InputError(f"{where}: image file not found")
            if path.stat().st_size > MAX_IMAGE_BYTES:
                raise InputError(f"{where}: image file is larger than {MAX_IMAGE_BYTES // 2**20} MiB")
            data = path.read_bytes()
        except (OSError, ValueError) as err:  # a name too long, a NUL byte, no permission
            raise InputError(f"{where[:200]}: cannot read the image file ({err.__class__.__name__})") from None
        return check_image(data, where)

    return ImageRef(where, label, read)


def folder_images(folder: Path) -> list[ImageRef]:
    """Images of a folder: in class subfolders (the subfolder names the label), or loose (unlabelled)."""
    refs = []
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            relative = path.relative_to(folder)
            label = _class_label(relative.parts[0]) if len(relative.parts) > 1 else None
            refs.append(image_file(path, label))
    return refs


@contextmanager
def zip_images(path: Path) -> Iterator[list[ImageRef]]:
    """Images of a .zip in class-subfolder layout, readable from the archive (never extracted) while open."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise InputError(f"{path.name}: not a readable .zip ({err.__class__.__name__})") from None
    with archive:
        yield _archive_images(archive, path)


def _archive_images(archive: zipfile.ZipFile, path: Path) -> list[ImageRef]:
    refs = []
    for member in checked_members(archive, path.name, ArchiveLimits(MAX_ZIP_MEMBERS, MAX_ZIP_UNCOMPRESSED,
                                                                        MAX_ZIP_UNCOMPRESSED)):
        name = member_path(member, path.name)
        if member.is_dir() or name.suffix.lower() not in IMAGE_SUFFIXES or name.name.startswith("."):
            continue
        if "__MACOSX" in name.parts:
            continue
        refs.append((list(name.parts), member))
    # One top folder around everything (a zipped folder) is not a class of its own.
    tops = {parts[0] for parts, _ in refs}
    wrapped = len(tops) == 1 and all(len(parts) > 2 for parts, _ in refs)
    result = []
    for parts, member in refs:
        inner = parts[1:] if wrapped else parts
        label = _class_label(inner[0]) if len(inner) > 1 else None
        result.append(ImageRef(f"{path.name}:{member.filename}", label, _member_reader(archive, member, path)))
    return result


def _class_label(folder: str) -> str:
    """A class folder's label, as written: '3' is class index 3 unless a class is named "3" (class_indices)."""
    return folder


def _member_reader(archive: zipfile.ZipFile, member: zipfile.ZipInfo, path: Path) -> Callable[[], bytes]:
    where = f"{path.name}:{member.filename}"

    def read() -> bytes:
        if member.file_size > MAX_IMAGE_BYTES:
            raise InputError(f"{where}: image file is larger than {MAX_IMAGE_BYTES // 2**20} MiB")
        data = read_member(archive, member, where, MAX_IMAGE_BYTES)  # the header's size is not trusted
        return check_image(data, where)

    return read
