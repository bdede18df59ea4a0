"""framework/data/tar.py against Python's tarfile: the same members and data on every format tarfile
writes, errors (never garbage) on truncated or damaged tars, resuming at a member's offset."""
from __future__ import annotations

import io
import tarfile

import pytest
import webdataset as wds

from framework.data.tar import TarFormatError, TarReader


def _members(fmt: int) -> list[tuple[str, bytes]]:
    # ustar holds names up to 100 characters plus a 155-character directory prefix; gnu and pax longer.
    long_dir = "d" * (120 if fmt != tarfile.USTAR_FORMAT else 60)
    return [("a/0001.json", b'{"query": "q"}'), ("a/0001.tok", bytes(range(256)) * 2),  # exactly one block
            ("a/0002.json", b""), (f"{long_dir}/0003.json", b"x" * 1000),
            (f"{'p' * 90}/{'n' * 95}.json", b"prefix and name"), ("b/0004.json", "é".encode() * 300)]


def _tar(fmt: int) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        directory = tarfile.TarInfo("a")
        directory.type = tarfile.DIRTYPE
        tar.addfile(directory)
        for i, (name, data) in enumerate(_members(fmt)):
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0.5 if fmt == tarfile.PAX_FORMAT else 0
            tar.addfile(info, io.BytesIO(data))
            if i == 2:
                link = tarfile.TarInfo("a/link")
                link.type, link.linkname = tarfile.SYMTYPE, "l" * 150 if fmt != tarfile.USTAR_FORMAT else "x"
                tar.addfile(link)
    return buffer.getvalue()


def _ours(data: bytes, offset: int = 0) -> list[tuple[str, int, bytes]]:
    handle = io.BytesIO(data)
    handle.seek(offset)
    reader = TarReader(handle, offset)
    return [(m.name, m.offset, reader.data()) for m in reader]


def _tarfile(data: bytes) -> list[tuple[str, int, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [(m.name, m.offset, tar.extractfile(m).read()) for m in tar if m.isfile()]


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT],
                         ids=["ustar", "gnu", "pax"])
def test_members_equal_tarfiles(fmt):
    data = _tar(fmt)
    expected = _tarfile(data)
    assert [(n, d) for n, _, d in expected] == _members(fmt)
    assert _ours(data) == expected
    # Resuming at any member's first header gives the rest, as the stream's ShardReader does.
    for i, (_, offset, _) in enumerate(expected):
        assert _ours(data, offset) == expected[i:]


def test_webdataset_shards_and_skipped_data(tmp_path):
    path = tmp_path / "s.tar"
    with wds.TarWriter(str(path), mtime=0.0, encoder=False) as sink:  # float mtime: a pax header each
        for i in range(5):
            sink.write({"__key__": f"src/{i:04d}", "json": b"{}" * i, "tok": bytes(7 * i)})
    data = path.read_bytes()
    assert _ours(data) == _tarfile(data)
    with open(path, "rb") as handle:  # members not read are seeked over
        reader = TarReader(handle)
        names = [m.name for m in reader]
    assert names == [f"src/{i:04d}.{ext}" for i in range(5) for ext in ("json", "tok")]


def test_truncated_or_damaged_tars_raise_and_never_give_garbage():
    data = _tar(tarfile.PAX_FORMAT)
    full = _tarfile(data)
    reader = TarReader(io.BytesIO(data))
    members = list(reader)
    archive_end = reader.offset  # where the end-of-archive zero blocks start
    assert len(members) == len(full) and len(data) > archive_end + 512
    starts = {offset for _, offset, _ in full} | {archive_end}
    for cut in sorted(set(range(0, len(data), 97)) | starts | {offset + 1024 for _, offset, _ in full}):
        got, clean = [], True
        reader = TarReader(io.BytesIO(data[:cut]))
        try:
            for member in reader:
                got.append((member.name, member.offset, reader.data()))
        except TarFormatError:
            clean = False
        assert got == full[:len(got)], cut  # whatever was read is exact
        # A cut inside a header or a member's data is an error; a cut where a header would start (or
        # after the first end-of-archive block) ends quietly, as tarfile's reading ends there.
        if cut in starts or cut >= archive_end + 512:
            assert clean and len(got) == sum(offset < cut for _, offset, _ in full), cut
        elif cut % 512 or any(offset < cut <= offset + 1024 for _, offset, _ in full):
            assert not clean, cut  # inside a block, or after a member's pax header but before the member
    damaged = bytearray(data)
    damaged[full[2][1] + 512 * 2 + 130] ^= 0x01  # a size digit of the third member's own header
    with pytest.raises(TarFormatError, match="checksum"):
        _ours(bytes(damaged))


def test_shard_reader_reads_plain_and_compressed_shards_by_range(tmp_path):
    import gzip

    from framework.data.reader import ShardReader, iter_samples

    path = tmp_path / "s.tar"
    with wds.TarWriter(str(path), mtime=0, encoder=False) as sink:
        for i in range(9):
            sink.write({"__key__": f"src/{i:04d}", "json": b'{"i": %d}' % i, "tok": bytes(i)})
    (tmp_path / "s.tar.gz").write_bytes(gzip.compress(path.read_bytes()))
    whole = list(iter_samples(str(path)))
    assert [s["json"] for s in whole] == [b'{"i": %d}' % i for i in range(9)]
    for shard in (str(path), str(tmp_path / "s.tar.gz")):
        reader = ShardReader()
        parts = [list(reader.read(shard, lo, 3)) for lo in (0, 3, 6)]  # window after window
        assert [s["__key__"] for part in parts for s in part] == [s["__key__"] for s in whole]
        assert [s["tok"] for part in parts for s in part] == [s["tok"] for s in whole]
    assert list(ShardReader().read(str(path), 7))[0]["__index__"] == 7
