"""The deflate engine: libdeflate (the `deflate` package) when it loads, zlib otherwise.

Compression is the bottleneck of a backup, and libdeflate deflates a whole 4 MiB block ~3x
faster than zlib at a similar ratio (figures in bench/deflate_engines.py and config.py's
GZIP_LEVEL). Both engines write standard gzip members (mtime 0, no file name) that any
gunzip reads; libdeflate's members are not byte-identical to zlib's, so `ENGINE` goes into
the manifest: the same input, level and engine always give the same bytes.

libdeflate works on whole buffers only (no streaming), which is what a member is: one
block in, one member out, and one whole member in when it is read back. Both calls
release the GIL (`Py_BEGIN_ALLOW_THREADS` around the work in the package's _deflate.c),
so threads run in parallel as they do with zlib.

The package's `gzip_decompress` trusts the member more than a backup reader may: it
allocates the output from the ISIZE in the last 4 bytes before inflating (a gzip bomb
asks for up to 4 GiB), returns empty output for ISIZE 0 without inflating anything, and
ignores bytes after the member's own trailer. `inflate_member` checks these itself.

When `deflate` cannot be imported (a layer without it, another platform) the engine is
zlib and one warning says so; L2C_DEFLATE_ENGINE=zlib forces zlib (benches, tests).
"""
import logging
import os
import struct
import threading
import zlib

log = logging.getLogger(__name__)

PACKAGE = "deflate"
MAX_LEVEL = 12  # libdeflate's range is 0..12; zlib stops at 9 (higher levels act as 9)


class InflateError(ValueError):
    """A member that is not one whole, intact gzip member: corrupt, truncated, trailing
    bytes, a wrong CRC32 or ISIZE, or an ISIZE over the caller's limit."""


def _load():
    if os.environ.get("L2C_DEFLATE_ENGINE", "").strip().lower() == "zlib":
        return None, "L2C_DEFLATE_ENGINE=zlib"
    try:
        import deflate
        deflate.gzip_compress(b"l2c", 1)  # a broken build fails here, not mid-backup
    except Exception as error:  # ImportError, a missing .so symbol, an old glibc
        return None, f"{type(error).__name__}: {error}"
    return deflate, None


_deflate, _why_zlib = _load()
FAST = _deflate is not None
ENGINE = (f"libdeflate (deflate {_deflate.__version__})" if FAST
          else f"zlib {zlib.ZLIB_RUNTIME_VERSION}")
_warned = []
_warned_lock = threading.Lock()


def warn_if_slow():
    """Logs, once per process, that backups run on zlib because `deflate` did not load."""
    if FAST or _warned:
        return
    with _warned_lock:  # pool threads may get here at once
        if _warned:
            return
        _warned.append(True)
    log.warning("deflate engine is zlib, not libdeflate: the %r package is not in use (%s);"
                " backups compress about 3x slower and reads inflate about 2x slower (same"
                " gzip format). Deploy the Python layer that ships it, or `pip install"
                " deflate`.", PACKAGE, _why_zlib)


def gzip_member(block, level):
    """One complete gzip member holding `block`: mtime 0, deterministic for engine+level."""
    if not 0 <= level <= MAX_LEVEL:
        raise ValueError(f"level must be 0..{MAX_LEVEL}, got {level!r}")
    warn_if_slow()
    if FAST:
        return bytes(_deflate.gzip_compress(block, level))
    # wbits 31 = gzip wrapper; zlib writes mtime 0 and computes CRC32/ISIZE itself.
    compressor = zlib.compressobj(min(level, 9), zlib.DEFLATED, 31)
    return compressor.compress(block) + compressor.flush()


_TRAILER = struct.Struct("<II")  # CRC32, ISIZE (size mod 2**32)


def inflate_member(member, max_size):
    """The data of `member`, which must be exactly one whole gzip member.

    Checks the CRC32 and ISIZE of the 8-byte trailer at the very end of `member` against
    the output, so a member cut short or followed by other bytes fails (libdeflate checks
    the trailer that follows its deflate stream, and ignores what comes after it). Refuses
    an ISIZE over `max_size` before allocating anything. Raises InflateError. (One case
    passes unseen: a whole member followed by an exact copy of its own last 8 bytes.)
    """
    member = memoryview(member)
    if len(member) < 18 or member[0] != 0x1F or member[1] != 0x8B:
        raise InflateError(f"not a gzip member ({len(member)} bytes, "
                           f"starts {bytes(member[:2]).hex() or 'empty'})")
    crc, isize = _TRAILER.unpack(member[-8:])
    if isize > max_size:
        raise InflateError(f"member says it holds {isize} bytes, over the limit of {max_size}")
    if FAST and isize:
        warn_if_slow()
        try:
            data = _deflate.gzip_decompress(member, isize)
        except (_deflate.DeflateError, ValueError) as error:
            raise InflateError(f"corrupt gzip member: {error}") from None
    else:
        data = _zlib_inflate(member, max_size)
    if len(data) != isize:
        raise InflateError(f"member inflates to {len(data)} bytes, its trailer says {isize}")
    if (_deflate.crc32(data) if FAST else zlib.crc32(data)) != crc:
        raise InflateError("member's CRC32 does not match its data (bytes after the member?)")
    return bytes(data)


def _zlib_inflate(member, max_size):
    inflater = zlib.decompressobj(31)
    try:
        # max_length bounds memory even when the trailer lies about the size.
        data = inflater.decompress(member, max_size + 1)
    except zlib.error as error:
        raise InflateError(f"corrupt gzip member: {error}") from None
    if len(data) > max_size:
        raise InflateError(f"member inflates to more than the limit of {max_size} bytes")
    if not inflater.eof:
        raise InflateError("truncated gzip member (no end of stream)")
    if inflater.unused_data:
        raise InflateError(f"{len(inflater.unused_data)} bytes after the end of the member")
    return data
