"""Image samples: the three layouts, and every hostile or broken archive refused with a message."""

import io
import json
import zipfile

import pytest
from PIL import Image
from tiny_families import colour_image

from commerge_ui import images
from commerge_ui.errors import InputError
from commerge_ui.samples import read_samples


def png(colour="red", seed=0) -> bytes:
    return colour_image(colour, seed)


def write_zip(path, entries: dict[str, bytes]):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return path


def test_zip_folder_and_image_column_give_labelled_images(tmp_path):
    write_zip(tmp_path / "a.zip", {"red/1.png": png(), "blue/2.png": png("blue"), "notes.txt": b"x",
                                   "__MACOSX/red/._1.png": b"junk"})
    wrapped = write_zip(tmp_path / "b.zip", {"data/red/1.png": png(), "data/blue/2.png": png("blue")})
    (tmp_path / "folder" / "green").mkdir(parents=True)
    (tmp_path / "folder" / "green" / "x.png").write_bytes(png("green"))
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "p.png").write_bytes(png())
    (tmp_path / "list.jsonl").write_text(json.dumps({"image": "pics/p.png", "label": "red"}) + "\n")
    for path in (tmp_path / "a.zip", wrapped):
        samples = read_samples(path, need_labels=True)
        assert sorted(s.label for s in samples) == ["blue", "red"] and all(s.is_image for s in samples)
    assert [s.label for s in read_samples(tmp_path / "folder")] == ["green"]
    only = read_samples(tmp_path / "list.jsonl")[0]
    assert only.label == "red" and Image.open(io.BytesIO(only.image)).size == (40, 40)
    assert [s.label for s in read_samples(tmp_path / "pics")] == [None]  # loose images: unlabelled


@pytest.mark.parametrize("entry", ["../evil.png", "/etc/evil.png", "red/../../evil.png", "C:/evil.png",
                                   "..\\evil.png"])
def test_zip_slip_entries_are_refused_and_nothing_is_written(tmp_path, entry):
    path = write_zip(tmp_path / "slip.zip", {"red/ok.png": png(), entry: png()})
    before = set(tmp_path.rglob("*"))
    with pytest.raises(InputError, match="points outside the archive; refused"):
        read_samples(path)
    assert set(tmp_path.rglob("*")) == before


def test_decompression_bombs_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "MAX_ZIP_UNCOMPRESSED", 1_000_000)
    bomb = write_zip(tmp_path / "bomb.zip", {"red/zeros.png": bytes(2_000_000)})  # deflates to ~2 KB
    assert bomb.stat().st_size < 20_000
    with pytest.raises(InputError, match="unpacks to more than .* \\(decompression bomb\\?\\)"):
        read_samples(bomb)
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 100 * 100)
    big = io.BytesIO()
    Image.new("RGB", (200, 200)).save(big, format="PNG")
    write_zip(tmp_path / "pixels.zip", {"red/big.png": big.getvalue()})
    with pytest.raises(InputError, match="200×200 pixels, more than .* \\(decompression bomb\\?\\)"):
        read_samples(tmp_path / "pixels.zip")


def test_a_member_bigger_than_its_header_says_is_cut_off(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "MAX_IMAGE_BYTES", 1000)
    path = write_zip(tmp_path / "big.zip", {"red/big.png": png() + bytes(5000)})
    with pytest.raises(InputError, match="larger than"):
        read_samples(path)


@pytest.mark.parametrize("content", [b"not an image", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, b""])
def test_files_that_are_not_images_are_named(tmp_path, content):
    write_zip(tmp_path / "bad.zip", {"red/ok.png": png(), "red/broken.png": content})
    with pytest.raises(InputError, match=r"bad.zip:red/broken.png: not a readable image"):
        read_samples(tmp_path / "bad.zip")
    (tmp_path / "list.jsonl").write_text(json.dumps({"image": "missing.png"}) + "\n")
    with pytest.raises(InputError, match="missing.png: image file not found"):
        read_samples(tmp_path / "list.jsonl")


def test_broken_and_empty_archives(tmp_path):
    (tmp_path / "junk.zip").write_bytes(b"PK\x03\x04 this is no zip")
    with pytest.raises(InputError, match="not a readable .zip"):
        read_samples(tmp_path / "junk.zip")
    write_zip(tmp_path / "texts.zip", {"a.txt": b"hello"})
    with pytest.raises(InputError, match="no samples"):
        read_samples(tmp_path / "texts.zip")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images in this folder"):
        read_samples(tmp_path / "empty")
    write_zip(tmp_path / "loose.zip", {"a.png": png()})
    with pytest.raises(InputError, match="sample 1 has no label"):
        read_samples(tmp_path / "loose.zip", need_labels=True)


def test_only_the_sampled_images_are_read(tmp_path, monkeypatch):
    write_zip(tmp_path / "many.zip", {f"red/{i}.png": png(seed=i) for i in range(20)})
    calls = []
    real = images.check_image
    monkeypatch.setattr(images, "check_image", lambda data, where: calls.append(where) or real(data, where))
    assert len(read_samples(tmp_path / "many.zip", limit=3)) == 3
    assert len(calls) == 3
