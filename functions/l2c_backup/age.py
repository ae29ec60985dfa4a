"""Client-side encryption in the age format (age-encryption.org/v1), on `cryptography`.

A backup encrypted here decrypts with the reference tool (`age -d -i key.txt`), and a
file `age` encrypted decrypts here: same header (X25519 recipient stanzas, HMAC-SHA256
over the header), same payload (16-byte nonce, then 64 KiB chunks sealed with
ChaCha20-Poly1305, the last one flagged as last). Written on `cryptography`'s primitives
rather than a binding because the table index reads one section of a backup with a
ranged read, so a chunk must be opened on its own (chunk i starts at
header_length + 16 + i * SEALED); the bindings on the package index only stream.

Memory is bounded: the Encryptor holds at most one chunk of plaintext beside the piece
being wrapped, the Decryptor at most one sealed chunk beside the piece being fed. A
sealed chunk is held until more bytes arrive or the object ends, because only then is it
known whether it must be the last.

Secrets: an Identity keeps its scalar inside a `cryptography` key object; its repr and
str show the recipient only, and no message raised here holds key text (a malformed key
file is named by its path and line number).
"""
import base64
import hashlib
import hmac
import os
import re

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import ConfigInvalid
from .logs import register_secret

FORMAT = "age-encryption.org/v1"
CHUNK = 65536
SEALED = CHUNK + 16
NONCE_SIZE = 16
FILE_KEY_SIZE = 16
HEADER_MAX = 1 << 20  # a header is ~100 bytes per recipient; anything this long is not one
RECIPIENT_HRP = "age"
IDENTITY_HRP = "age-secret-key-"
IDENTITY_HINT = ("set BACKUP_AGE_IDENTITY_FILE to an age-keygen key file (or BACKUP_AGE_IDENTITY "
                 "to its AGE-SECRET-KEY-1... line) of one of the backup's recipients")

_INTRO = FORMAT.encode() + b"\n"
_X25519_INFO = b"age-encryption.org/v1/X25519"
_B64 = re.compile(rb"^[A-Za-z0-9+/]*$")
_VCHAR = re.compile(rb"^[\x21-\x7e]+$")


def _broken(reason, detail):
    from .reading import Broken  # reading imports much; only needed on failure
    return Broken(reason, detail)


# --- bech32 (BIP 173), the encoding of age's keys ---------------------------------------

_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_GEN = (0x3b6a57b2, 0x26508e6d, 0x1ea119fa, 0x3d4233dd, 0x2a1462b3)


def _polymod(values):
    chk = 1
    for v in values:
        top = chk >> 25
        chk = (chk & 0x1ffffff) << 5 ^ v
        for i in range(5):
            chk ^= _GEN[i] if (top >> i) & 1 else 0
    return chk


def _hrp_expand(hrp):
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _convert(data, frombits, tobits, pad):
    acc = bits = 0
    out = []
    maxv = (1 << tobits) - 1
    for value in data:
        acc = (acc << frombits) | value
        bits += frombits
        while bits >= tobits:
            bits -= tobits
            out.append((acc >> bits) & maxv)
    if pad:
        if bits:
            out.append((acc << (tobits - bits)) & maxv)
    elif bits >= frombits or (acc << (tobits - bits)) & maxv:
        raise ValueError("bech32: bad padding")
    return out


def bech32_encode(hrp, data):
    values = _convert(data, 8, 5, True)
    checksum = _polymod(_hrp_expand(hrp) + values + [0] * 6) ^ 1
    values += [(checksum >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(_CHARSET[v] for v in values)


def bech32_decode(text):
    """(hrp, bytes) of a bech32 string, lower-cased. ValueError (never holding the
    text) when it is not one: mixed case, a character outside the alphabet, a bad
    checksum or padding."""
    if text.lower() != text and text.upper() != text:
        raise ValueError("bech32: mixed case")
    text = text.lower()
    pos = text.rfind("1")
    if pos < 1 or pos + 7 > len(text) or any(not 33 <= ord(c) <= 126 for c in text):
        raise ValueError("bech32: no separator, or too short")
    hrp, rest = text[:pos], text[pos + 1:]
    if any(c not in _CHARSET for c in rest):
        raise ValueError("bech32: a character outside the alphabet")
    values = [_CHARSET.index(c) for c in rest]
    if _polymod(_hrp_expand(hrp) + values) != 1:
        raise ValueError("bech32: wrong checksum")
    return hrp, bytes(_convert(values[:-6], 5, 8, False))


# --- keys -------------------------------------------------------------------------------

def _hkdf(ikm, salt, info):
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def _recipient_bytes(recipient):
    """The 32-byte X25519 public key of an `age1...` string; ValueError otherwise."""
    hrp, key = bech32_decode(recipient)
    if hrp != RECIPIENT_HRP or len(key) != 32:
        raise ValueError("not an age X25519 recipient")
    return key


def _wrap_key(shared, share, recipient_pub):
    if shared == bytes(32):  # cryptography refuses these already; the spec says check
        raise ValueError("all-zero X25519 shared secret")
    return _hkdf(shared, share + recipient_pub, _X25519_INFO)


class Identity:
    """One X25519 identity (an `AGE-SECRET-KEY-1...`). `.recipient` is its public key;
    the scalar stays inside, out of repr, str and messages."""

    __slots__ = ("_key", "_pub", "recipient")

    def __init__(self, key: X25519PrivateKey):
        self._key = key
        self._pub = key.public_key().public_bytes_raw()
        self.recipient = bech32_encode(RECIPIENT_HRP, self._pub)

    @classmethod
    def from_text(cls, text):
        """ValueError (without the text) when it is not an AGE-SECRET-KEY-1..."""
        hrp, scalar = bech32_decode(text.strip())
        if hrp != IDENTITY_HRP or len(scalar) != 32:
            raise ValueError("not an age X25519 identity")
        return cls(X25519PrivateKey.from_private_bytes(scalar))

    def __repr__(self):
        return f"Identity({self.recipient})"

    __str__ = __repr__

    def __reduce__(self):  # a pickle would carry the scalar to wherever it is sent
        raise TypeError("an age Identity is not pickled (it holds a secret key)")

    def __eq__(self, other):
        return isinstance(other, Identity) and other._pub == self._pub

    def __hash__(self):
        return hash(self._pub)

    def unwrap(self, args, body):
        """The file key from one X25519 stanza, or None when it is not sealed to this
        identity. ValueError when the stanza is malformed."""
        if len(args) != 1:
            raise ValueError("an X25519 stanza takes one argument")
        share = _b64decode(args[0])
        if len(share) != 32:
            raise ValueError("an X25519 stanza's share is not 32 bytes")
        if len(body) != FILE_KEY_SIZE + 16:
            raise ValueError("an X25519 stanza's body is not 32 bytes")
        try:
            shared = self._key.exchange(X25519PublicKey.from_public_bytes(share))
        except ValueError:
            raise ValueError("an X25519 stanza's share is a low-order point") from None
        key = _wrap_key(shared, share, self._pub)
        try:
            return ChaCha20Poly1305(key).decrypt(bytes(12), body, None)
        except InvalidTag:
            return None

    def _secret_text(self):
        """The AGE-SECRET-KEY-1... line: for writing a key file (generate), nothing else."""
        raw = self._key.private_bytes_raw()
        return bech32_encode(IDENTITY_HRP, raw).upper()


def generate():
    """A new identity: (its AGE-SECRET-KEY-1... text, its age1... recipient)."""
    identity = Identity(X25519PrivateKey.generate())
    return identity._secret_text(), identity.recipient


def _looks_secret(entry):
    return "secret" in entry.lower() or entry.upper().startswith("AGE-PLUGIN-")


def parse_recipients(text, setting="BACKUP_AGE_RECIPIENTS"):
    """The age1... keys in `text` (separated by commas and/or whitespace), lower-cased,
    duplicates dropped, in order; [] for an empty setting. ConfigInvalid names the
    setting and the entry's position, and the entry itself unless it may be a secret."""
    found = []
    hint = ("give the recipients' public keys (age1..., what `age-keygen -y KEYFILE` prints), "
            "separated by commas or spaces")
    for position, entry in enumerate((e for e in re.split(r"[,\s]+", text or "") if e), 1):
        if entry.upper().startswith("AGE-SECRET-KEY-"):
            raise ConfigInvalid(f"{setting}: entry {position} is an age identity "
                                "(AGE-SECRET-KEY-1..., a secret key), not a public key",
                                hint + "; keep the identity out of this setting and out of "
                                "the backup's environment (restore reads it from "
                                "BACKUP_AGE_IDENTITY_FILE)")
        try:
            key = _recipient_bytes(entry)
        except ValueError as e:
            shown = ("(not shown: it may hold a secret)" if _looks_secret(entry) or len(entry) > 120
                     else repr(entry))
            raise ConfigInvalid(f"{setting}: entry {position} {shown} is not an age public key "
                                f"({e})", hint) from None
        recipient = bech32_encode(RECIPIENT_HRP, key)
        if recipient not in found:
            found.append(recipient)
    return found


def parse_identities(text, source):
    """The identities of an age-keygen key file (AGE-SECRET-KEY-1... lines, `#` comments,
    blank lines), duplicates dropped. ConfigInvalid names `source` and the line number,
    never a line's content. Every key line is first given to the log redactor, in both
    cases (bech32 reads either), so no log line can carry it."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        register_secret(line, line.lower(), line.upper())
        try:
            identity = Identity.from_text(line)
        except ValueError as e:
            if line.lower().startswith("age1"):
                what = "is a public key (age1...), not an identity"
            elif line.upper().startswith("AGE-PLUGIN-"):
                what = "is an age plugin identity, which l2c-backup cannot use"
            elif line.upper().startswith("AGE-SECRET-KEY-1"):
                what = f"is not a valid AGE-SECRET-KEY-1... identity ({e})"
            else:
                what = "is not an age identity (AGE-SECRET-KEY-1...), a comment (#) or blank"
            raise ConfigInvalid(f"{source}, line {number}: {what}",
                                "give the key file age-keygen wrote (or its AGE-SECRET-KEY-1... "
                                "line); check that line") from None
        if identity not in found:
            found.append(identity)
    if not found:
        raise ConfigInvalid(f"{source} holds no age identity (AGE-SECRET-KEY-1... line)",
                            "give the key file age-keygen wrote")
    return found


def load_identities(path, setting="BACKUP_AGE_IDENTITY_FILE"):
    """parse_identities of the key file at `path`; ConfigInvalid naming the setting and
    the path when it cannot be read."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else "not a text file"
        raise ConfigInvalid(f"{setting}: cannot read the age key file {path}: {why}",
                            "give the path of the key file age-keygen wrote") from None
    return parse_identities(text, f"{setting} ({path})")


# --- the header ---------------------------------------------------------------------------

def _b64encode(data):
    return base64.b64encode(data).rstrip(b"=")


def _b64decode(text):
    """Canonical unpadded standard base64, as the age header demands; ValueError else."""
    if isinstance(text, str):
        text = text.encode("ascii", "replace")
    if not _B64.match(text) or len(text) % 4 == 1:
        raise ValueError("not unpadded base64")
    data = base64.b64decode(text + b"=" * (-len(text) % 4))
    if _b64encode(data) != text:
        raise ValueError("not canonical base64")
    return data


class Header:
    """An age header as read: `.length` (bytes, through the MAC line), `.stanzas` (list
    of (type, args)), `.bodies` (each stanza's body), `.mac`, and `.mac_input` (the bytes
    the MAC covers)."""

    def __init__(self, length, stanzas, bodies, mac, mac_input):
        self.length, self.stanzas, self.bodies = length, stanzas, bodies
        self.mac, self.mac_input = mac, mac_input

    def __repr__(self):
        return f"Header(length={self.length}, stanzas={[t for t, _ in self.stanzas]})"


def _header_end(data):
    """The header's length when `data` holds all of it (through the `---` line), else
    None."""
    mark = data.find(b"\n---")
    if mark < 0:
        return None
    end = data.find(b"\n", mark + 4)
    return None if end < 0 else end + 1


def read_header(data, name=""):
    """Parses and checks the shape of the age header at the start of `data` (bytes from
    the object's first byte; more may follow). Broken("age-header") when malformed,
    Broken("truncated") when `data` ends inside a header that was well formed so far."""
    at = f"{name}: " if name else ""
    data = bytes(data[:HEADER_MAX])
    if not data.startswith(_INTRO):
        if _INTRO.startswith(data):
            raise _broken("truncated", f"{at}the object ends inside the age header "
                                       f"({len(data)} bytes)")
        raise _broken("age-header", f"{at}not an age file: it does not start with "
                                    f"{FORMAT!r}")
    end = _header_end(data)
    lines = data[:end].split(b"\n") if end else data.split(b"\n")[:-1]
    stanzas, bodies = [], []
    i = 1

    def bad(why):
        return _broken("age-header", f"{at}malformed age header, line {i + 1}: {why}")

    while i < len(lines):
        line = lines[i]
        if line.startswith(b"---"):
            if end is None or not line.startswith(b"--- "):
                raise bad("the MAC line is not '--- ' and the MAC")
            try:
                mac = _b64decode(line[4:])
            except ValueError as e:
                raise bad(f"the MAC is {e}") from None
            if len(mac) != 32:
                raise bad("the MAC is not 32 bytes")
            return Header(end, stanzas, bodies, mac, data[:end - len(line) - 1 + 3])
        if not line.startswith(b"-> "):
            raise bad("neither a stanza ('-> ') nor the MAC line ('--- ')")
        args = line[3:].split(b" ")
        if not all(_VCHAR.match(a) for a in args):
            raise bad("a stanza argument is empty or holds a character outside ASCII 33-126")
        if args[0] == b"X25519":
            for arg in args[1:]:
                try:
                    _b64decode(arg)
                except ValueError as e:
                    raise bad(f"an X25519 stanza argument is {e}") from None
        body = []
        while True:
            i += 1
            if i >= len(lines):
                break  # the data ends inside this stanza
            piece = lines[i]
            if len(piece) > 64 or not _B64.match(piece):
                raise bad("a stanza body line is not base64 of at most 64 characters")
            body.append(piece)
            if len(piece) < 64:
                break
        if i >= len(lines):
            break
        try:
            decoded = _b64decode(b"".join(body))
        except ValueError as e:
            raise bad(f"a stanza body is {e}") from None
        stanzas.append((args[0].decode("ascii"), [a.decode("ascii") for a in args[1:]]))
        bodies.append(decoded)
        i += 1
    if len(data) >= HEADER_MAX:
        raise _broken("age-header", f"{at}no end of the age header in its first {HEADER_MAX} bytes")
    raise _broken("truncated", f"{at}the object ends inside the age header ({len(data)} bytes)")


def _unwrap(header, identities, name):
    """(file key, identity) that opens the header, its MAC checked."""
    at = f"{name} " if name else "the object "
    if not identities:
        raise ConfigInvalid(f"{at}is encrypted (age) and no identity was given to open it",
                            IDENTITY_HINT)
    if not any(kind == "X25519" for kind, _ in header.stanzas):
        raise _broken("age-header", f"{at}has no X25519 recipient stanza (l2c-backup opens "
                                    "only those)")
    for identity in identities:
        for (kind, args), body in zip(header.stanzas, header.bodies):
            if kind != "X25519":
                continue  # other recipient types and grease are skipped, as age does
            try:
                file_key = identity.unwrap(args, body)
            except ValueError as e:
                raise _broken("age-header", f"{at}has a malformed X25519 stanza: {e}") from None
            if file_key is None:
                continue
            mac_key = _hkdf(file_key, b"", b"header")
            mac = hmac.new(mac_key, header.mac_input, hashlib.sha256).digest()
            if not hmac.compare_digest(mac, header.mac):
                raise _broken("age-header", f"{at}fails the age header's MAC check (the "
                                            "header was changed)")
            return file_key, identity
    keys = ", ".join(i.recipient for i in identities)
    raise ConfigInvalid(f"{at}is not encrypted to any identity given "
                        f"({len(identities)}: {keys})", IDENTITY_HINT)


# --- the payload --------------------------------------------------------------------------

def _chunk_nonce(index, last):
    return index.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


def sealed_size(payload_size):
    """The bytes the payload takes once sealed (without header and nonce)."""
    chunks = max(1, -(-payload_size // CHUNK))
    return payload_size + 16 * chunks


class _Payload:
    """Opens sealed chunks; messages name the chunk and its bytes in the object."""

    def __init__(self, file_key, nonce, base, name):
        self._aead = ChaCha20Poly1305(_hkdf(file_key, nonce, b"payload"))
        self.base = base  # where chunk 0 starts in the object
        self.at = f"{name}: " if name else ""

    def where(self, index, size):
        start = self.base + index * SEALED
        return f"chunk {index} (bytes {start}-{start + size - 1} of the object)"

    def open(self, index, sealed, last):
        try:
            return self._aead.decrypt(_chunk_nonce(index, last), sealed, None)
        except InvalidTag:
            return None

    def fail(self, reason, index, size, why):
        return _broken(reason, f"{self.at}{self.where(index, size)} {why}")


class Encryptor:
    """Encrypts one stream to `recipients` (age1... strings). `.header` is known at once;
    `.wrap(pieces)` yields the object: header and nonce, then the sealed chunks. After it,
    `.size` and `.sha256` are of the ciphertext, `.payload_size` the plaintext bytes."""

    def __init__(self, recipients):
        if isinstance(recipients, str):
            recipients = [recipients]
        if not recipients:
            raise ConfigInvalid("age encryption needs at least one recipient",
                                "set BACKUP_AGE_RECIPIENTS to one or more age1... public keys")
        file_key = os.urandom(FILE_KEY_SIZE)
        lines = [_INTRO]
        for recipient in recipients:
            try:
                pub = _recipient_bytes(recipient)
            except ValueError as e:
                raise ConfigInvalid(f"not an age public key: {e}",
                                    "give age1... keys (parse_recipients)") from None
            ephemeral = X25519PrivateKey.generate()
            share = ephemeral.public_key().public_bytes_raw()
            shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(pub))
            body = ChaCha20Poly1305(_wrap_key(shared, share, pub)).encrypt(
                bytes(12), file_key, None)
            lines.append(b"-> X25519 " + _b64encode(share) + b"\n")
            lines.append(_wrap_lines(_b64encode(body)))
        lines.append(b"---")
        mac_input = b"".join(lines)
        mac = hmac.new(_hkdf(file_key, b"", b"header"), mac_input, hashlib.sha256).digest()
        self.header = mac_input + b" " + _b64encode(mac) + b"\n"
        self.header_length = len(self.header)
        self.recipients = list(recipients)
        self._nonce = os.urandom(NONCE_SIZE)
        self._aead = ChaCha20Poly1305(_hkdf(file_key, self._nonce, b"payload"))
        self.size = 0
        self.payload_size = 0
        self.sha256 = hashlib.sha256()
        self._used = False

    def _out(self, data):
        self.size += len(data)
        self.sha256.update(data)
        return data

    def wrap(self, pieces):
        """Yields the ciphertext of the plaintext `pieces` (bytes-like, any size)."""
        if self._used:
            raise RuntimeError("an Encryptor wraps one stream")
        self._used = True
        seal = self._aead.encrypt
        yield self._out(self.header + self._nonce)
        index = 0
        held = bytearray()  # at most CHUNK bytes: the chunk that may yet be the last
        for piece in pieces:
            if not piece:
                continue
            self.payload_size += len(piece)
            view = memoryview(piece)
            pos, left = 0, len(view)
            if held:
                take = min(CHUNK - len(held), left)
                held += view[:take]
                pos, left = take, left - take
                if left:  # more follows: the held chunk is not the last
                    yield self._out(seal(_chunk_nonce(index, False), held, None))
                    index += 1
                    held.clear()
            while left > CHUNK:
                yield self._out(seal(_chunk_nonce(index, False), view[pos:pos + CHUNK], None))
                index += 1
                pos, left = pos + CHUNK, left - CHUNK
            if left:
                held += view[pos:]
        yield self._out(seal(_chunk_nonce(index, True), held, None))


def _wrap_lines(b64):
    """A stanza body: 64-character lines, the last one shorter (empty when need be)."""
    lines = [b64[i:i + 64] for i in range(0, len(b64), 64)]
    if not lines or len(lines[-1]) == 64:
        lines.append(b"")
    return b"".join(line + b"\n" for line in lines)


class Decryptor:
    """Decrypts one age object fed in pieces of any size: `.feed(ciphertext)` returns the
    plaintext it completes, `.finish()` the rest, checking that the object ended where
    its last chunk says. `size`, when known (the manifest's or storage's), tells an
    object cut short from one changed inside its last chunk.
    Damage: reading.Broken with reason age-header, age-chunk or truncated. No identity,
    or none that opens the object: errors.ConfigInvalid naming their public keys."""

    def __init__(self, identities, name="", size=None):
        self.identities = list(identities or [])
        self.name = name
        self.expected_size = size
        self.header = None
        self.header_length = None
        self.recipient = None
        self.size = 0  # ciphertext bytes fed
        self.payload_size = 0  # plaintext bytes returned
        self._start = bytearray()  # the header and nonce while they come in
        self._mark = None  # where the header's "\n---" line starts, once seen
        self._payload = None
        self._held = bytearray()  # at most SEALED bytes: the chunk that may be the last
        self._index = 0
        self._done = False

    def _begin(self, data):
        before = len(self._start)
        self._start += data
        if self.header is None:
            end = self._header_end(before)
            if end is None:
                if len(self._start) >= HEADER_MAX or not (
                        self._start.startswith(_INTRO) or _INTRO.startswith(self._start)):
                    read_header(self._start, self.name)  # raises age-header
                return b""
            self.header = read_header(self._start[:end], self.name)
            self.header_length = end
            self._file_key, identity = _unwrap(self.header, self.identities, self.name)
            self.recipient = identity.recipient
        base = self.header_length + NONCE_SIZE
        if len(self._start) < base:
            return b""
        self._payload = _Payload(self._file_key, bytes(self._start[self.header_length:base]),
                                 base, self.name)
        del self._file_key
        # the payload's first bytes are the tail of `data`: no copy of them is kept
        seen_before = len(self._start) - len(data)
        self._start = None
        return memoryview(data)[base - seen_before:]

    def _header_end(self, before):
        """_header_end of what came so far, looking only at bytes not searched before
        (a header fed a byte at a time stays linear)."""
        if self._mark is None:
            mark = self._start.find(b"\n---", max(0, before - 3))
            if mark < 0:
                return None
            self._mark, before = mark, mark + 4
        end = self._start.find(b"\n", max(self._mark + 4, before))
        return None if end < 0 else end + 1

    def _not_last(self, sealed):
        """Opens a full chunk known to be followed by more bytes."""
        plain = self._payload.open(self._index, sealed, False)
        if plain is None:
            if self._payload.open(self._index, sealed, True) is not None:
                raise self._payload.fail("age-chunk", self._index, SEALED,
                                         "is sealed as the last chunk, but more bytes follow it")
            raise self._payload.fail("age-chunk", self._index, SEALED,
                                     "fails authentication: it was changed, or chunks were "
                                     "reordered")
        self._index += 1
        self.payload_size += len(plain)
        return plain

    def feed(self, data):
        if self._done:
            raise RuntimeError("Decryptor.feed after finish")
        self.size += len(data)
        if self._payload is None:
            data = self._begin(data)
            if self._payload is None or not data:
                return b""
        out = []
        view = memoryview(data)
        pos, left = 0, len(view)
        if self._held:
            take = min(SEALED - len(self._held), left)
            self._held += view[:take]
            pos, left = take, left - take
            if left:
                out.append(self._not_last(self._held))
                self._held.clear()
        while left > SEALED:
            out.append(self._not_last(view[pos:pos + SEALED]))
            pos, left = pos + SEALED, left - SEALED
        if left:
            self._held += view[pos:]
        return b"".join(out)

    def finish(self):
        """The last chunk's plaintext; Broken when the object ended early."""
        if self._done:
            return b""
        self._done = True
        at = f"{self.name}: " if self.name else ""
        if self._payload is None:
            if self.header is None:
                read_header(self._start, self.name)  # raises: truncated or age-header
            raise _broken("truncated", f"{at}the object ends inside the payload nonce, "
                                       "after the age header")
        index, size = self._index, len(self._held)
        sealed = bytes(self._held)
        short = self.expected_size is not None and self.size < self.expected_size
        if size == 0:
            raise _broken("truncated", f"{at}the object ends after the age header and nonce, "
                                       "before its first chunk")
        if size < 16:
            raise self._payload.fail("truncated", index, size,
                                     f"holds {size} bytes, less than its tag: the object was "
                                     "cut short")
        plain = self._payload.open(index, sealed, True)
        if plain is not None:
            if not plain and index > 0:  # age writes an empty last chunk only when alone
                raise self._payload.fail("age-chunk", index, size, "is an empty last chunk")
            if short:
                raise _broken("truncated", f"{at}the object holds {self.size} bytes, "
                                           f"{self.expected_size} expected")
            self._held.clear()
            self.payload_size += len(plain)
            return plain
        if size == SEALED and self._payload.open(index, sealed, False) is not None:
            raise self._payload.fail("truncated", index, size,
                                     "is not sealed as the last chunk: the object was cut "
                                     "short at a chunk boundary")
        if short:
            raise self._payload.fail("truncated", index, size,
                                     f"is cut short: the object holds {self.size} bytes, "
                                     f"{self.expected_size} expected")
        if self.expected_size is None and size < SEALED:
            # a cut and a changed byte look alike here; the object's size tells them apart
            raise self._payload.fail("age-chunk", index, size,
                                     "fails authentication as the last chunk: it was changed, "
                                     "or the object was cut short inside it")
        raise self._payload.fail("age-chunk", index, size,
                                 "fails authentication: it was changed, or chunks were reordered")


class RangeReading:
    """The plaintext of a range of an age object's payload: iterate for the bytes;
    close() lets go of the storage read, also before the end."""

    def __init__(self, chunks, close):
        self._chunks, self._close = chunks, close

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._chunks)

    def close(self):
        self._chunks.close()
        self._close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_range(storage, key, identities, header_length, payload_size, offset, length,
               chunk_size=1 << 20):
    """The plaintext bytes [offset, offset + length) of the payload of the age object
    `key`: one ranged read of the header and nonce (opened and its MAC checked at once),
    then one of the chunks covering the range, each chunk's tag checked (the payload's
    last chunk as the last). Broken / ConfigInvalid as for the Decryptor."""
    if offset < 0 or length < 1 or offset + length > payload_size:
        raise ValueError(f"range {offset}+{length} is outside the payload's {payload_size} bytes")
    base = header_length + NONCE_SIZE
    with storage.open(key, chunk_size, offset=0, length=base) as reading:
        start = b"".join(reading)
    if len(start) < header_length:
        read_header(start, key)  # raises: truncated, or age-header
    header = read_header(start[:header_length], key)
    if header.length != header_length:
        raise _broken("age-header", f"{key}: the age header is {header.length} bytes, "
                                    f"the manifest says {header_length}")
    if len(start) < base:
        raise _broken("truncated", f"{key}: the object ends inside the payload nonce")
    file_key, _ = _unwrap(header, identities, key)
    payload = _Payload(file_key, start[header_length:base], base, key)
    chunks = max(1, -(-payload_size // CHUNK))
    first, last = offset // CHUNK, (offset + length - 1) // CHUNK
    begin = base + first * SEALED
    end = base + payload_size + 16 * chunks if last == chunks - 1 else base + (last + 1) * SEALED
    reading = storage.open(key, chunk_size, offset=begin, length=end - begin)

    def plaintext():
        held = bytearray()
        index = first
        skip = offset - first * CHUNK
        want = length

        def open_one(sealed):
            nonlocal skip, want
            plain = payload.open(index, sealed, index == chunks - 1)
            if plain is None:
                raise payload.fail("age-chunk", index, len(sealed),
                                   "fails authentication: it was changed, or chunks were "
                                   "reordered")
            piece = plain[skip:skip + want]
            skip = 0
            want -= len(piece)
            return piece

        for data in reading:
            held += data
            while len(held) >= SEALED and index < last:
                yield open_one(bytes(held[:SEALED]))
                del held[:SEALED]
                index += 1
        expected = (end - begin) - (index - first) * SEALED
        if len(held) != expected:
            raise payload.fail("truncated", index, len(held),
                               f"holds {len(held)} bytes, {expected} expected: the object "
                               "was cut short")
        yield open_one(bytes(held))

    return RangeReading(plaintext(), reading.close)
