"""The qcow2 header: fixed fields, header extensions and feature bits (qcow2.txt).

Everything is big-endian. Version 2 headers are 72 bytes; version 3 adds feature bitmaps,
refcount_order and header_length. Extensions follow the header up to the end of the first
cluster; unknown ones are kept verbatim and written back when the header is rewritten.
"""

from __future__ import annotations

import struct
from typing import Dict, List, Optional, Tuple

from ..errors import ImageFormatError

MAGIC = b"QFI\xfb"
V2_HEADER_LENGTH = 72
V3_HEADER_LENGTH = 104
_FIXED = struct.Struct(">4sIQIIQIIQQIIQ")  # through snapshots_offset: 72 bytes
_V3 = struct.Struct(">QQQII")  # features, refcount_order, header_length: 32 bytes

MIN_CLUSTER_BITS = 9
MAX_CLUSTER_BITS = 21
MAX_BACKING_NAME = 1023
MAX_L1_BYTES = 32 << 20  # QEMU's cap: enough for any sane disk, bounds our allocation
MAX_REFTABLE_BYTES = 8 << 20
MAX_SNAPSHOTS = 65536

INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_DATA_FILE = 1 << 2
INCOMPAT_COMPRESSION = 1 << 3
INCOMPAT_EXTL2 = 1 << 4
COMPAT_LAZY_REFCOUNTS = 1 << 0
AUTOCLEAR_BITMAPS = 1 << 0
AUTOCLEAR_DATA_FILE_RAW = 1 << 1

EXT_END = 0
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_FEATURE_NAMES = 0x6803F857
EXT_BITMAPS = 0x23852875
EXT_CRYPTO = 0x0537BE77
EXT_DATA_FILE = 0x44415441

_KNOWN_FEATURE_NAMES = {
    (0, 0): "dirty bit", (0, 1): "corrupt bit", (0, 2): "external data file",
    (0, 3): "compression type", (0, 4): "extended L2 entries",
    (1, 0): "lazy refcounts", (2, 0): "bitmaps", (2, 1): "raw external data",
}
COMPRESSION_TYPES = {0: "zlib", 1: "zstd"}


class Qcow2Header:
    """Parsed header; ``serialize`` rebuilds the first cluster from these fields."""

    def __init__(self) -> None:
        self.version = 3
        self.backing_file_offset = 0
        self.backing_file_size = 0
        self.cluster_bits = 16
        self.size = 0
        self.crypt_method = 0
        self.l1_size = 0
        self.l1_table_offset = 0
        self.refcount_table_offset = 0
        self.refcount_table_clusters = 0
        self.nb_snapshots = 0
        self.snapshots_offset = 0
        self.incompatible_features = 0
        self.compatible_features = 0
        self.autoclear_features = 0
        self.refcount_order = 4
        self.header_length = V3_HEADER_LENGTH
        self.compression_type = 0
        self.backing_file: Optional[str] = None
        self.backing_format: Optional[str] = None
        self.data_file: Optional[str] = None
        self.feature_names: Dict[Tuple[int, int], str] = {}
        self.unknown_extensions: List[Tuple[int, bytes]] = []  # kept verbatim
        self.other_extensions: List[Tuple[int, bytes]] = []  # known, not interpreted

    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits

    @property
    def refcount_bits(self) -> int:
        return 1 << self.refcount_order

    def feature_name(self, kind: int, bit: int) -> str:
        name = self.feature_names.get((kind, bit)) or _KNOWN_FEATURE_NAMES.get((kind, bit))
        return name or f"unknown feature bit {bit}"

    # ----- parsing -----
    @classmethod
    def parse(cls, data: bytes, file_size: int, path: str) -> "Qcow2Header":
        """Parse and validate the header in ``data`` (the file's first bytes)."""
        if len(data) < V2_HEADER_LENGTH:
            raise ImageFormatError(
                f"{path}: truncated qcow2 header ({len(data)} bytes, need {V2_HEADER_LENGTH})")
        h = cls()
        (magic, h.version, h.backing_file_offset, h.backing_file_size, h.cluster_bits, h.size,
         h.crypt_method, h.l1_size, h.l1_table_offset, h.refcount_table_offset,
         h.refcount_table_clusters, h.nb_snapshots, h.snapshots_offset) = _FIXED.unpack_from(data)
        if magic != MAGIC:
            raise ImageFormatError(f"{path}: not a qcow2 image (bad magic {magic!r})")
        if h.version not in (2, 3):
            raise ImageFormatError(f"{path}: unsupported qcow2 version {h.version}")
        if not MIN_CLUSTER_BITS <= h.cluster_bits <= MAX_CLUSTER_BITS:
            raise ImageFormatError(
                f"{path}: cluster_bits {h.cluster_bits} is outside "
                f"{MIN_CLUSTER_BITS}..{MAX_CLUSTER_BITS}")
        if h.version == 3:
            if len(data) < V3_HEADER_LENGTH:
                raise ImageFormatError(
                    f"{path}: truncated qcow2 v3 header ({len(data)} bytes, need "
                    f"{V3_HEADER_LENGTH})")
            (h.incompatible_features, h.compatible_features, h.autoclear_features,
             h.refcount_order, h.header_length) = _V3.unpack_from(data, V2_HEADER_LENGTH)
            if h.header_length < V3_HEADER_LENGTH or h.header_length > h.cluster_size:
                raise ImageFormatError(
                    f"{path}: header_length {h.header_length} is outside "
                    f"{V3_HEADER_LENGTH}..{h.cluster_size}")
            if h.header_length > V3_HEADER_LENGTH:
                if len(data) < V3_HEADER_LENGTH + 1:
                    raise ImageFormatError(f"{path}: truncated qcow2 header extension area")
                h.compression_type = data[V3_HEADER_LENGTH]
            if h.refcount_order > 6:
                raise ImageFormatError(f"{path}: refcount_order {h.refcount_order} is above 6")
        else:
            h.header_length = V2_HEADER_LENGTH
        h._validate(file_size, path)
        h._parse_extensions(data, path)
        h._parse_backing_name(data, path)
        return h

    def _validate(self, file_size: int, path: str) -> None:
        cs = self.cluster_size
        if self.size >= 1 << 63:
            raise ImageFormatError(f"{path}: virtual size {self.size} is too large")
        if self.crypt_method != 0:
            raise ImageFormatError(f"{path}: encrypted qcow2 images are not supported")
        l2_entries = cs // 8
        needed_l1 = -(-self.size // (cs * l2_entries))
        if self.l1_size * 8 > MAX_L1_BYTES:
            raise ImageFormatError(f"{path}: l1_size {self.l1_size} is too large")
        if self.l1_size < needed_l1:
            raise ImageFormatError(
                f"{path}: l1_size {self.l1_size} is too small for the virtual size "
                f"{self.size} (needs {needed_l1})")
        _check_table(path, "L1 table", self.l1_table_offset, self.l1_size * 8, cs, file_size,
                     self.l1_size == 0)
        if self.refcount_table_clusters == 0:
            raise ImageFormatError(f"{path}: refcount table has zero clusters")
        if self.refcount_table_clusters * cs > MAX_REFTABLE_BYTES:
            raise ImageFormatError(
                f"{path}: refcount_table_clusters {self.refcount_table_clusters} is too large")
        _check_table(path, "refcount table", self.refcount_table_offset,
                     self.refcount_table_clusters * cs, cs, file_size, False)
        if self.nb_snapshots > MAX_SNAPSHOTS:
            raise ImageFormatError(f"{path}: {self.nb_snapshots} snapshots is too many")
        if self.nb_snapshots:
            _check_table(path, "snapshot table", self.snapshots_offset, 1, cs, file_size, False)
        if self.backing_file_offset:
            if self.backing_file_size > MAX_BACKING_NAME or self.backing_file_size == 0:
                raise ImageFormatError(
                    f"{path}: backing file name length {self.backing_file_size} is outside "
                    f"1..{MAX_BACKING_NAME}")
            if self.backing_file_offset + self.backing_file_size > cs:
                raise ImageFormatError(
                    f"{path}: backing file name at offset {self.backing_file_offset} is "
                    "outside the header cluster")

    def _parse_extensions(self, data: bytes, path: str) -> None:
        pos = _align8(self.header_length)
        end = min(len(data), self.cluster_size)
        if self.backing_file_offset:
            end = min(end, self.backing_file_offset)
        while pos + 8 <= end:
            ext_type, length = struct.unpack_from(">II", data, pos)
            if ext_type == EXT_END:
                return
            pos += 8
            if pos + length > end:
                raise ImageFormatError(
                    f"{path}: header extension {ext_type:#x} at offset {pos - 8} "
                    f"({length} bytes) runs past the header cluster")
            body = bytes(data[pos:pos + length])
            self._take_extension(ext_type, body, path)
            pos += _align8(length)

    def _take_extension(self, ext_type: int, body: bytes, path: str) -> None:
        if ext_type == EXT_BACKING_FORMAT:
            self.backing_format = body.decode("utf-8", "replace").rstrip("\0")
        elif ext_type == EXT_FEATURE_NAMES:
            for pos in range(0, len(body) - 47, 48):
                kind, bit = body[pos], body[pos + 1]
                name = body[pos + 2:pos + 48].split(b"\0", 1)[0].decode("utf-8", "replace")
                self.feature_names[(kind, bit)] = name
        elif ext_type == EXT_DATA_FILE:
            self.data_file = body.decode("utf-8", "replace").rstrip("\0")
        elif ext_type in (EXT_BITMAPS, EXT_CRYPTO):
            self.other_extensions.append((ext_type, body))
        else:
            self.unknown_extensions.append((ext_type, body))

    def _parse_backing_name(self, data: bytes, path: str) -> None:
        if not self.backing_file_offset:
            return
        end = self.backing_file_offset + self.backing_file_size
        if end > len(data):
            raise ImageFormatError(f"{path}: backing file name lies past the end of the file")
        raw = bytes(data[self.backing_file_offset:end])
        try:
            self.backing_file = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ImageFormatError(f"{path}: backing file name is not UTF-8") from err

    def check_features(self, path: str, read_only: bool) -> None:
        """Refuse incompatible features pyhv cannot honour (qcow2.txt: must not open)."""
        unsupported = self.incompatible_features & ~(INCOMPAT_DIRTY | INCOMPAT_CORRUPT)
        if unsupported & INCOMPAT_COMPRESSION and self.compression_type == 0:
            unsupported &= ~INCOMPAT_COMPRESSION
        for bit in range(64):
            if unsupported & (1 << bit):
                extra = ""
                if bit == 3:
                    kind = COMPRESSION_TYPES.get(self.compression_type, "unknown")
                    extra = f" ({kind}, only zlib is supported)"
                raise ImageFormatError(
                    f"{path}: unsupported qcow2 feature: {self.feature_name(0, bit)}{extra}")
        if self.compression_type not in (0,) and self.version == 3:
            raise ImageFormatError(
                f"{path}: unsupported compression type {self.compression_type}")
        if self.incompatible_features & INCOMPAT_CORRUPT and not read_only:
            raise ImageFormatError(
                f"{path}: image is marked corrupt; open it read-only, or repair it with "
                "'pyhv img check -r all'")
        if self.version == 2 and self.refcount_order != 4:
            raise ImageFormatError(f"{path}: qcow2 v2 requires 16-bit refcounts")

    # ----- serialization -----
    def serialize(self) -> bytes:
        """Build the header cluster (fixed part, extensions, backing name)."""
        out = bytearray(_FIXED.pack(
            MAGIC, self.version, 0, 0, self.cluster_bits, self.size, self.crypt_method,
            self.l1_size, self.l1_table_offset, self.refcount_table_offset,
            self.refcount_table_clusters, self.nb_snapshots, self.snapshots_offset))
        if self.version == 3:
            length = max(self.header_length, V3_HEADER_LENGTH)
            if self.compression_type:
                length = max(length, 112)
            out += _V3.pack(self.incompatible_features, self.compatible_features,
                            self.autoclear_features, self.refcount_order, length)
            out += bytes(_align8(length) - len(out))
            if length > V3_HEADER_LENGTH:
                out[V3_HEADER_LENGTH] = self.compression_type
            self.header_length = length
        extensions: List[Tuple[int, bytes]] = []
        if self.backing_format:
            extensions.append((EXT_BACKING_FORMAT, self.backing_format.encode()))
        if self.data_file:
            extensions.append((EXT_DATA_FILE, self.data_file.encode()))
        extensions += self.other_extensions
        if self.version == 3:
            extensions.append((EXT_FEATURE_NAMES, self._feature_table()))
        extensions += self.unknown_extensions
        for ext_type, body in extensions:
            out += struct.pack(">II", ext_type, len(body)) + body
            out += bytes(_align8(len(out)) - len(out))
        out += bytes(8)  # end-of-extensions marker
        if self.backing_file:
            name = self.backing_file.encode()
            self.backing_file_offset, self.backing_file_size = len(out), len(name)
            out += name
            struct.pack_into(">QI", out, 8, self.backing_file_offset, self.backing_file_size)
        else:
            self.backing_file_offset = self.backing_file_size = 0
        if len(out) > self.cluster_size:
            raise ImageFormatError(
                f"qcow2 header with its extensions ({len(out)} bytes) does not fit in a "
                f"{self.cluster_size}-byte cluster")
        return bytes(out)

    def _feature_table(self) -> bytes:
        names = dict(_KNOWN_FEATURE_NAMES)
        names.update(self.feature_names)
        table = bytearray()
        for (kind, bit), name in sorted(names.items()):
            table += bytes([kind, bit]) + name.encode()[:46].ljust(46, b"\0")
        return bytes(table)


def _align8(n: int) -> int:
    return (n + 7) & ~7


def _check_table(path: str, what: str, offset: int, length: int, cluster_size: int,
                 file_size: int, may_be_empty: bool) -> None:
    if may_be_empty and length == 0:
        return
    if offset == 0 or offset % cluster_size:
        raise ImageFormatError(
            f"{path}: {what} offset {offset:#x} is not a non-zero multiple of the cluster size")
    if offset + length > file_size:
        raise ImageFormatError(
            f"{path}: {what} at offset {offset:#x} ({length} bytes) extends beyond the end "
            f"of the file ({file_size} bytes)")
