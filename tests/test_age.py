"""The age format (age.py) held to the reference tool: what we encrypt, `age -d` decrypts
byte for byte; what `age -e` encrypts, we decrypt, fed in pieces of any size. Every kind
of damage (a cut, a flipped byte, swapped chunks, a changed header) is found with its
reason, and `age -d` refuses the same damaged bytes, so the damage is real. Ranged reads
of a payload (the table index) through a directory and the local OSS server. Keys and
settings never put a secret key in a message or a repr."""
import base64
import hashlib
import hmac
import os
import pickle
import re
import subprocess
import tracemalloc

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from l2c_backup import age
from l2c_backup.errors import ConfigInvalid
from l2c_backup.reading import Broken
from l2c_backup.storage import open_storage
from l2c_backup.storage.oss import OSSSettings

CHUNK, SEALED = age.CHUNK, age.SEALED
MiB = 1 << 20
SECRET = re.compile(r"AGE-SECRET-KEY-1[0-9A-Z]+", re.I)


def run(*args, data=None, check=True):
    return subprocess.run(args, input=data, capture_output=True, check=check)


def keygen(path):
    """An age-keygen key file: (path, its identity, its public key)."""
    run("age-keygen", "-o", str(path))
    return str(path), age.load_identities(str(path), "KEYFILE")[0], \
        run("age-keygen", "-y", str(path)).stdout.decode().strip()


@pytest.fixture
def alice(tmp_path):
    return keygen(tmp_path / "alice.txt")


@pytest.fixture
def bob(tmp_path):
    return keygen(tmp_path / "bob.txt")


def encrypt(recipients, data, piece=MiB):
    encryptor = age.Encryptor(recipients)
    out = b"".join(encryptor.wrap(data[i:i + piece] for i in range(0, len(data), piece)))
    return encryptor, out


def decrypt(identities, data, piece=MiB, size=None, name="db-backups/x.sql.gz.age"):
    decryptor = age.Decryptor(identities, name, size=size)
    out = [decryptor.feed(data[i:i + piece]) for i in range(0, len(data), piece)]
    return b"".join(out) + decryptor.finish()


def age_decrypt(keyfile, data, tmp_path):
    path = tmp_path / "object.age"
    path.write_bytes(data)
    return run("age", "-d", "-i", keyfile, str(path), check=False)


def refused(keyfile, data, tmp_path):
    """`age -d` refuses these bytes (nothing on stdout and a non-zero exit)."""
    done = age_decrypt(keyfile, data, tmp_path)
    return done.returncode != 0


def chunk_start(header_length, index):
    return header_length + 16 + index * SEALED


# -- keys ----------------------------------------------------------------------------------

def test_a_key_file_age_keygen_wrote_gives_the_public_key_it_printed(alice):
    path, identity, public = alice
    text = open(path).read()
    [line] = [l for l in text.splitlines() if l.startswith("# public key: ")]
    assert identity.recipient == public == line[len("# public key: "):]
    assert public.startswith("age1") and len(public) == 62


def test_a_generated_key_is_one_age_uses(tmp_path):
    secret, recipient = age.generate()
    assert secret.startswith("AGE-SECRET-KEY-1") and recipient.startswith("age1")
    path = tmp_path / "generated.txt"
    path.write_text(f"# public key: {recipient}\n{secret}\n")
    assert run("age-keygen", "-y", str(path)).stdout.decode().strip() == recipient
    sealed = run("age", "-e", "-r", recipient, data=b"hello").stdout
    assert run("age", "-d", "-i", str(path), data=sealed).stdout == b"hello"
    assert decrypt(age.parse_identities(secret, "test"), sealed) == b"hello"
    assert age.generate() != age.generate()


def test_an_identity_shows_its_public_key_only_and_is_not_pickled():
    secret, recipient = age.generate()
    [identity] = age.parse_identities(secret, "test")
    assert repr(identity) == str(identity) == f"Identity({recipient})"
    assert secret not in repr(vars(identity)) if hasattr(identity, "__dict__") else True
    with pytest.raises(TypeError):
        pickle.dumps(identity)


def test_a_malformed_key_in_a_key_file_is_named_by_its_line_never_shown(tmp_path, alice):
    path, _, _ = alice
    good = [l for l in open(path).read().splitlines() if l.startswith("AGE-SECRET-KEY-1")][0]
    bad = good[:-3] + ("QQQ" if not good.endswith("QQQ") else "PPP")  # checksum broken
    broken = tmp_path / "keys.txt"
    broken.write_text(f"# created: today\n{good}\n\n{bad}\n")
    with pytest.raises(ConfigInvalid) as e:
        age.load_identities(str(broken), "BACKUP_AGE_IDENTITY_FILE")
    message = str(e.value)
    assert "line 4" in message and str(broken) in message and "BACKUP_AGE_IDENTITY_FILE" in message
    assert not SECRET.search(message) and good[20:40] not in message and bad[20:40] not in message


@pytest.mark.parametrize("text,said", [
    ("# nothing here\n\n", "holds no age identity"),
    ("age1qyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqs3290gq\n", "public key"),
    ("AGE-PLUGIN-YUBIKEY-1QQQQQQ\n", "plugin"),
    ("password=hunter2\n", "line 1: is not an age identity"),
])
def test_a_key_file_without_a_usable_identity_is_refused(text, said):
    with pytest.raises(ConfigInvalid) as e:
        age.parse_identities(text, "BACKUP_AGE_IDENTITY")
    assert said in str(e.value) and "hunter2" not in str(e.value)


def test_a_key_file_that_cannot_be_read_names_the_setting_and_path(tmp_path):
    missing = str(tmp_path / "none.txt")
    with pytest.raises(ConfigInvalid, match="BACKUP_AGE_IDENTITY_FILE.*none.txt"):
        age.load_identities(missing, "BACKUP_AGE_IDENTITY_FILE")


def test_recipients_separated_by_commas_spaces_and_newlines_are_normalised(alice, bob):
    a, b = alice[2], bob[2]
    text = f" {a.upper()},{b}\n\t{a} ,, {b}\n"
    assert age.parse_recipients(text) == [a, b]
    assert age.parse_recipients("") == [] and age.parse_recipients(" \n") == []


@pytest.mark.parametrize("entry,said", [
    ("age1notakey", "'age1notakey'"),
    ("ssh-ed25519", "'ssh-ed25519'"),
])
def test_a_recipient_that_is_not_an_age_key_is_named_with_its_position(alice, entry, said):
    with pytest.raises(ConfigInvalid) as e:
        age.parse_recipients(f"{alice[2]}, {entry}")
    assert "BACKUP_AGE_RECIPIENTS: entry 2" in str(e.value) and said in str(e.value)


def test_a_recipient_with_a_wrong_checksum_is_refused(alice):
    public = alice[2]
    wrong = public[:-1] + ("q" if public[-1] != "q" else "p")
    with pytest.raises(ConfigInvalid, match="entry 1 .* wrong checksum"):
        age.parse_recipients(wrong, "BACKUP_AGE_RECIPIENTS")


def test_a_secret_key_given_as_a_recipient_is_named_as_such_and_never_shown(alice):
    path, _, public = alice
    secret = [l for l in open(path).read().splitlines() if l.startswith("AGE-SECRET-KEY-1")][0]
    for given in (secret, secret.lower(), secret[:-1] + "X", "key=" + secret):
        with pytest.raises(ConfigInvalid) as e:
            age.parse_recipients(f"{public} {given}")
        message = str(e.value)
        assert "entry 2" in message and not SECRET.search(message)
        assert secret[16:40].lower() not in message.lower()
    with pytest.raises(ConfigInvalid, match="entry 2 is an age identity"):
        age.parse_recipients(f"{public} {secret}")


# -- interoperability with the age CLI ---------------------------------------------------

SIZES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 1_000_003]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("two", [False, True], ids=["one-recipient", "two-recipients"])
def test_what_we_encrypt_age_decrypts(tmp_path, alice, bob, size, two):
    data = os.urandom(size)
    recipients = [alice[2], bob[2]] if two else [alice[2]]
    encryptor, sealed = encrypt(recipients, data, piece=50_000)
    chunks = max(1, -(-size // CHUNK))
    assert len(sealed) == encryptor.size == encryptor.header_length + 16 + size + 16 * chunks
    assert encryptor.payload_size == size
    assert encryptor.sha256.hexdigest() == hashlib.sha256(sealed).hexdigest()
    assert sealed.startswith(encryptor.header)
    for keyfile in ([alice[0], bob[0]] if two else [alice[0]]):
        done = age_decrypt(keyfile, sealed, tmp_path)
        assert done.returncode == 0, done.stderr
        assert done.stdout == data
    assert decrypt([alice[1]], sealed, piece=65552, size=len(sealed)) == data
    if not two:
        assert refused(bob[0], sealed, tmp_path)


def age_encrypted(tmp_path, alice, bob, how, data):
    source = tmp_path / "plain"
    source.write_bytes(data)
    if how == "-r":
        args = ["-r", alice[2]]
    elif how == "-R":
        listing = tmp_path / "recipients.txt"
        listing.write_text(f"# the backup's keys\n{alice[2]}\n")
        args = ["-R", str(listing)]
    else:
        args = ["-r", bob[2], "-r", alice[2]]
    return run("age", "-e", *args, str(source)).stdout


@pytest.mark.parametrize("how", ["-r", "-R", "two -r"])
@pytest.mark.parametrize("piece", [1, 7, 65552, MiB])
def test_what_age_encrypts_we_decrypt_in_pieces_of_any_size(tmp_path, alice, bob, how, piece):
    data = os.urandom(3 * CHUNK + 321 if piece < 100 else 1_000_003)
    sealed = age_encrypted(tmp_path, alice, bob, how, data)
    decryptor = age.Decryptor([bob[1], alice[1]] if how == "two -r" else [alice[1]])
    out = bytearray()
    for i in range(0, len(sealed), piece):
        out += decryptor.feed(sealed[i:i + piece])
    out += decryptor.finish()
    assert out == data
    assert decryptor.payload_size == len(data) and decryptor.size == len(sealed)
    assert decryptor.recipient == (bob[2] if how == "two -r" else alice[2])
    header = age.read_header(sealed)
    assert header.length == decryptor.header_length
    assert [t for t, _ in header.stanzas] == ["X25519"] * (2 if how == "two -r" else 1)


def test_an_empty_file_age_encrypted_decrypts_to_nothing(tmp_path, alice):
    sealed = run("age", "-e", "-r", alice[2], data=b"").stdout
    assert decrypt([alice[1]], sealed, piece=5) == b""


def hkdf(ikm, salt, info):
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def b64(data):
    return base64.b64encode(data).rstrip(b"=")


def test_unknown_stanzas_are_skipped_as_age_skips_them(tmp_path, alice):
    # Built here from the spec with cryptography alone (age and rage add such "grease"
    # stanzas); `age -d` accepting it shows the construction is right.
    file_key = os.urandom(16)
    pub = age.bech32_decode(alice[2])[1]
    ephemeral = X25519PrivateKey.generate()
    share = ephemeral.public_key().public_bytes_raw()
    shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(pub))
    body = ChaCha20Poly1305(hkdf(shared, share + pub, b"age-encryption.org/v1/X25519")) \
        .encrypt(bytes(12), file_key, None)
    grease = b64(os.urandom(70))
    head = (b"age-encryption.org/v1\n-> l2c-grease x +y\n" + grease[:64] + b"\n" + grease[64:]
            + b"\n-> X25519 " + b64(share) + b"\n" + b64(body) + b"\n---")
    mac = hmac.new(hkdf(file_key, b"", b"header"), head, hashlib.sha256).digest()
    nonce = os.urandom(16)
    payload = ChaCha20Poly1305(hkdf(file_key, nonce, b"payload")).encrypt(
        bytes(11) + b"\x01", b"grease is ignored", None)
    sealed = head + b" " + b64(mac) + b"\n" + nonce + payload
    assert age_decrypt(alice[0], sealed, tmp_path).stdout == b"grease is ignored"
    assert decrypt([alice[1]], sealed) == b"grease is ignored"
    assert age.read_header(sealed).stanzas[0] == ("l2c-grease", ["x", "+y"])


# -- bounded memory ------------------------------------------------------------------------

def test_encrypting_20_mb_in_1_mib_pieces_holds_about_two_chunks():
    piece = os.urandom(MiB)
    encryptor = age.Encryptor([age.generate()[1]])
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for _ in encryptor.wrap(piece for _ in range(20)):
            pass
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert encryptor.payload_size == 20 * MiB
    assert peak < 3.5 * SEALED, peak  # the held chunk, the sealed chunk and the one before


def test_decrypting_20_mb_in_1_mib_pieces_holds_one_piece_and_about_two_chunks(tmp_path):
    secret, recipient = age.generate()
    path = tmp_path / "big.age"
    encryptor = age.Encryptor([recipient])
    with open(path, "wb") as f:
        for sealed in encryptor.wrap(os.urandom(MiB) for _ in range(20)):
            f.write(sealed)
    decryptor = age.Decryptor(age.parse_identities(secret, "test"))
    total = 0
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        with open(path, "rb") as f:
            while piece := f.read(MiB):
                total += len(decryptor.feed(piece))
                del piece
        total += len(decryptor.finish())
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert total == 20 * MiB
    # the piece read, the plaintext being joined (its chunks and the joined copy) and
    # the held chunk; all 20 MB would be 20x this
    assert peak < 3 * MiB + 4 * SEALED, peak


# -- damage --------------------------------------------------------------------------------

DATA = os.urandom(4 * CHUNK + 1000)  # five chunks, the last short
NAME = "db-backups/x.sql.gz.age"


@pytest.fixture
def sealed(alice):
    encryptor, data = encrypt([alice[2]], DATA)
    return encryptor.header_length, data


def broken(identity, data, size=None, piece=MiB):
    with pytest.raises(Broken) as e:
        decrypt([identity], data, piece=piece, size=size)
    assert not SECRET.search(e.value.detail)
    return e.value


def flip(data, at):
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:]


def test_a_wrong_identity_names_the_public_keys_given_never_a_secret(tmp_path, alice, bob, sealed):
    _, data = sealed
    with pytest.raises(ConfigInvalid) as e:
        decrypt([bob[1]], data)
    message = str(e.value)
    assert bob[2] in message and NAME in message and "BACKUP_AGE_IDENTITY_FILE" in message
    assert not SECRET.search(message) and alice[2] not in message
    assert refused(bob[0], data, tmp_path)


def test_no_identity_is_config_invalid_naming_the_setting(sealed):
    with pytest.raises(ConfigInvalid) as e:
        decrypt([], sealed[1])
    assert "no identity" in str(e.value) and "BACKUP_AGE_IDENTITY_FILE" in str(e.value)
    assert not SECRET.search(str(e.value))


@pytest.mark.parametrize("cut_chunk", [1, 4])  # a middle chunk, the last
def test_an_object_cut_inside_a_chunk_is_truncated(tmp_path, alice, sealed, cut_chunk):
    header_length, data = sealed
    cut = data[:chunk_start(header_length, cut_chunk) + 500]
    e = broken(alice[1], cut, size=len(data))
    assert e.reason == "truncated" and f"chunk {cut_chunk} (bytes " in e.detail
    # without the size a cut and a change inside the last bytes look alike: age-chunk,
    # and the detail says both
    e = broken(alice[1], cut, piece=7)
    assert e.reason == "age-chunk" and "cut short" in e.detail and "changed" in e.detail
    assert refused(alice[0], cut, tmp_path)


@pytest.mark.parametrize("keep", [0, 1, 15])
def test_an_object_cut_in_the_header_nonce_or_a_tag_is_truncated(alice, sealed, keep):
    header_length, data = sealed
    for end in (header_length - 10, header_length + 8, chunk_start(header_length, 2) + keep):
        e = broken(alice[1], data[:end], piece=3)
        assert e.reason == "truncated", (end, e.detail)


def test_an_object_cut_at_a_chunk_boundary_is_truncated(tmp_path, alice, sealed):
    header_length, data = sealed
    for chunks in (1, 3, 4):
        cut = data[:chunk_start(header_length, chunks)]
        e = broken(alice[1], cut)
        assert e.reason == "truncated", e.detail
        assert f"chunk {chunks - 1} (bytes " in e.detail and "chunk boundary" in e.detail
        assert refused(alice[0], cut, tmp_path)


@pytest.mark.parametrize("chunk", [0, 2, 4])
def test_one_flipped_byte_in_any_chunk_is_age_chunk_naming_it(tmp_path, alice, sealed, chunk):
    header_length, data = sealed
    start = chunk_start(header_length, chunk)
    damaged = flip(data, start + 123)
    for size in (None, len(data)):
        e = broken(alice[1], damaged, size=size, piece=65552)
        assert e.reason == "age-chunk" and NAME in e.detail
        end = start + (SEALED if chunk < 4 else 1000 + 16) - 1
        assert f"chunk {chunk} (bytes {start}-{end} of the object)" in e.detail
    assert refused(alice[0], damaged, tmp_path)


def test_a_flipped_byte_in_a_tag_or_the_nonce_is_found(tmp_path, alice, sealed):
    header_length, data = sealed
    for at, chunk in ((header_length + 5, 0), (chunk_start(header_length, 2) - 1, 1)):
        damaged = flip(data, at)
        e = broken(alice[1], damaged)
        assert e.reason == "age-chunk" and f"chunk {chunk} (" in e.detail
        assert refused(alice[0], damaged, tmp_path)


def test_two_swapped_chunks_are_age_chunk(tmp_path, alice, sealed):
    header_length, data = sealed
    one, two, three = (chunk_start(header_length, i) for i in (1, 2, 3))
    swapped = data[:one] + data[two:three] + data[one:two] + data[three:]
    assert len(swapped) == len(data)
    e = broken(alice[1], swapped)
    assert e.reason == "age-chunk" and "chunk 1 (" in e.detail and "reordered" in e.detail
    assert refused(alice[0], swapped, tmp_path)


def test_bytes_after_the_last_chunk_are_age_chunk(tmp_path, alice, sealed):
    header_length, data = sealed
    for extra in (b"x", os.urandom(SEALED + 5)):
        e = broken(alice[1], data + extra)
        assert e.reason == "age-chunk" and "chunk 4 (" in e.detail, e.detail
        assert refused(alice[0], data + extra, tmp_path)


def test_a_broken_header_mac_is_age_header(tmp_path, alice, sealed):
    header_length, data = sealed
    mac_line = data.rindex(b"\n--- ", 0, header_length) + 5
    mac = base64.b64decode(data[mac_line:header_length - 1] + b"=")
    damaged = data[:mac_line] + b64(flip(mac, 3)) + data[header_length - 1:]
    e = broken(alice[1], damaged)
    assert e.reason == "age-header" and "MAC" in e.detail and NAME in e.detail
    assert refused(alice[0], damaged, tmp_path)


def test_a_changed_stanza_is_found(tmp_path, alice, bob):
    encryptor, data = encrypt([alice[2], bob[2]], DATA)
    header = age.read_header(data)
    lines = data[:header.length].split(b"\n")
    # bob's stanza body (line 4) changed: alice's key still opens the file key, and
    # the MAC over the header fails
    body = base64.b64decode(lines[4] + b"=")
    damaged = b"\n".join(lines[:4] + [b64(flip(body, 0))] + lines[5:]) + data[header.length:]
    e = broken(alice[1], damaged)
    assert e.reason == "age-header" and "MAC" in e.detail
    assert refused(alice[0], damaged, tmp_path)
    # alice's own stanza changed: it no longer opens with her key, which cannot be told
    # from a wrong key, so it is the wrong-identity error (age says the same)
    body = base64.b64decode(lines[2] + b"=")
    damaged = b"\n".join(lines[:2] + [b64(flip(body, 0))] + lines[3:]) + data[header.length:]
    with pytest.raises(ConfigInvalid, match=alice[2]):
        decrypt([alice[1]], damaged)
    assert refused(alice[0], damaged, tmp_path)


def non_canonical(b64text):
    """The same bytes in base64 whose unused low bits are not zero."""
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = alphabet.index(b64text[-1:])
    return b64text[:-1] + alphabet[last | 1:(last | 1) + 1]


@pytest.mark.parametrize("change", ["share", "mac", "padding", "stray", "line"])
def test_a_header_line_that_is_not_canonical_is_age_header(tmp_path, alice, sealed, change):
    header_length, data = sealed
    head, rest = data[:header_length], data[header_length:]
    lines = head.split(b"\n")
    if change == "share":
        lines[1] = b"-> X25519 " + non_canonical(lines[1][len(b"-> X25519 "):])
    elif change == "mac":
        lines[3] = b"--- " + non_canonical(lines[3][4:])
    elif change == "padding":
        lines[2] += b"="
    elif change == "stray":
        lines.insert(3, b"hello")
    else:
        lines[1] = b"-> X25519  " + lines[1][len(b"-> X25519 "):]  # empty argument
    damaged = b"\n".join(lines) + rest
    assert damaged != data
    e = broken(alice[1], damaged)
    assert e.reason == "age-header", e.detail
    with pytest.raises(Broken):
        age.read_header(damaged)
    assert refused(alice[0], damaged, tmp_path)


def test_what_is_not_an_age_file_is_age_header(alice):
    for data in (b"\x1f\x8b\x08\x00 a gzip file" * 10, b"age-encryption.org/v2\n-> X25519 x\n"):
        e = broken(alice[1], data)
        assert e.reason == "age-header" and "not an age file" in e.detail
    assert broken(alice[1], b"").reason == "truncated"


# -- ranged reads --------------------------------------------------------------------------

PAYLOAD = os.urandom(5 * CHUNK + 1234)
KEY = "db-backups/daily/backup_2026-01-20.sql.gz.age"
RANGES = [(100, 50), (CHUNK - 10, 20), (CHUNK + 10, 2 * CHUNK), (0, CHUNK),
          (len(PAYLOAD) - 1, 1), (len(PAYLOAD) - 70000, 70000), (0, len(PAYLOAD))]


@pytest.fixture(params=["directory", "oss"])
def stored(request, tmp_path, alice):
    if request.param == "directory":
        storage = open_storage(str(tmp_path / "backups"))
    else:
        server = request.getfixturevalue("oss_server")
        settings = OSSSettings(server.endpoint, server.access_key_id, server.access_key_secret,
                               min_part_size=MiB)
        storage = open_storage("oss://l2c-backups/db-backups", settings)
    encryptor = age.Encryptor([alice[2]])
    storage.put_stream(KEY, encryptor.wrap([PAYLOAD]))
    return storage, encryptor.header_length


class Opens:
    """The storage's reads (offset, length) as open_range asks for them."""

    def __init__(self, storage):
        self.calls = []
        real = storage.open

        def counted(key, chunk_size=MiB, offset=0, length=None):
            self.calls.append((offset, length))
            return real(key, chunk_size, offset=offset, length=length)
        storage.open = counted


def read_range(storage, identity, header_length, offset, length, payload_size=len(PAYLOAD)):
    reading = age.open_range(storage, KEY, [identity], header_length, payload_size,
                             offset, length, 4096)
    try:
        return b"".join(reading)
    finally:
        reading.close()


@pytest.mark.parametrize("offset,length", RANGES)
def test_a_range_of_the_payload_is_exactly_its_plaintext(stored, alice, offset, length):
    storage, header_length = stored
    opens = Opens(storage)
    assert read_range(storage, alice[1], header_length, offset, length) == \
        PAYLOAD[offset:offset + length]
    first, last = offset // CHUNK, (offset + length - 1) // CHUNK
    begin = chunk_start(header_length, first)
    end = min(chunk_start(header_length, last + 1),
              header_length + 16 + len(PAYLOAD) + 16 * 6)
    # one read of the header and nonce, one of exactly the chunks covering the range
    assert opens.calls == [(0, header_length + 16), (begin, end - begin)]


def test_a_flipped_byte_inside_the_range_is_broken_outside_it_unread(tmp_path, alice):
    storage = open_storage(str(tmp_path / "backups"))
    encryptor = age.Encryptor([alice[2]])
    data = flip(b"".join(encryptor.wrap([PAYLOAD])), chunk_start(encryptor.header_length, 2) + 9)
    storage.put_bytes(KEY, data)
    with pytest.raises(Broken) as e:
        read_range(storage, alice[1], encryptor.header_length, 2 * CHUNK + 5, 100)
    assert e.value.reason == "age-chunk" and f"{KEY}: chunk 2 (bytes " in e.value.detail
    with pytest.raises(Broken, match="chunk 2"):
        read_range(storage, alice[1], encryptor.header_length, CHUNK, 2 * CHUNK)
    # chunks 0 and 3.. are whole and are all that is read
    assert read_range(storage, alice[1], encryptor.header_length, 10, 100) == PAYLOAD[10:110]
    assert read_range(storage, alice[1], encryptor.header_length, 3 * CHUNK, 5) == \
        PAYLOAD[3 * CHUNK:3 * CHUNK + 5]


def test_a_range_of_an_object_cut_short_is_truncated_even_at_a_chunk_boundary(tmp_path, alice):
    storage = open_storage(str(tmp_path / "backups"))
    encryptor = age.Encryptor([alice[2]])
    data = b"".join(encryptor.wrap([PAYLOAD]))
    header_length = encryptor.header_length
    storage.put_bytes(KEY, data[:chunk_start(header_length, 5) - 3])
    with pytest.raises(Broken) as e:
        read_range(storage, alice[1], header_length, len(PAYLOAD) - 10, 10)
    assert e.value.reason == "truncated"
    # cut after chunk 2 and offered as a payload of 3 chunks: chunk 2 is not sealed as
    # the last, so the shorter object does not pass
    storage.put_bytes(KEY, data[:chunk_start(header_length, 3)])
    with pytest.raises(Broken, match="chunk 2"):
        read_range(storage, alice[1], header_length, 2 * CHUNK, 10, payload_size=3 * CHUNK)


def test_a_range_with_a_wrong_identity_or_a_broken_header_is_refused(tmp_path, alice, bob):
    storage = open_storage(str(tmp_path / "backups"))
    encryptor = age.Encryptor([alice[2]])
    data = b"".join(encryptor.wrap([PAYLOAD]))
    storage.put_bytes(KEY, data)
    with pytest.raises(ConfigInvalid, match=bob[2]):
        read_range(storage, bob[1], encryptor.header_length, 0, 10)
    storage.put_bytes(KEY, flip(data, encryptor.header_length - 3))
    with pytest.raises(Broken) as e:
        read_range(storage, alice[1], encryptor.header_length, 0, 10)
    assert e.value.reason == "age-header"
    with pytest.raises(ValueError):
        read_range(storage, alice[1], encryptor.header_length, len(PAYLOAD) - 5, 10)
