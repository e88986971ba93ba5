"""Parsing of the TPM 2.0 structures that attestation evidence carries.

Structure names and sections follow TPM 2.0 Library, Part 2 (Structures),
revision 1.59: ``TPMT_PUBLIC`` (12.2.4), ``TPMS_ATTEST`` (10.12),
``TPMT_SIGNATURE`` (11.3.4), ``TPML_PCR_SELECTION`` (10.9.7). Object Names
follow Part 1 (Architecture) section 16. The event log formats are those of
the TCG PC Client Platform Firmware Profile (``TCG_PCR_EVENT``,
``TCG_PCR_EVENT2``, ``TCG_EfiSpecIDEvent``).

Every value is big-endian, as the TPM marshals it, except the event log, which
is little-endian because UEFI firmware writes it. Parsers are strict: a
structure that is truncated, has trailing bytes, exceeds a size bound of
Part 2, or uses a selector this module does not know raises
``EvidenceError`` with reason ``malformed`` (or
``unsupported`` for a well-formed but unsupported choice).

This module is hand-written with ``struct``: no maintained pure-Python
library parses these structures without also needing the TSS C libraries
(``tpm2-pytss`` wraps them), and the issuer must verify evidence on hosts
with no TPM software installed.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ..errors import EvidenceError

__all__ = [
    "ATTRIBUTE_BITS",
    "HASH_ALGORITHMS",
    "TPM_GENERATED_VALUE",
    "Attest",
    "CertifyInfo",
    "EventLog",
    "EventLogEvent",
    "HashAlgorithm",
    "Public",
    "QuoteInfo",
    "Signature",
    "hash_by_id",
    "hash_by_name",
    "marshal_pcr_selection",
    "parse_attest",
    "parse_event_log",
    "parse_public",
    "parse_signature",
    "replay_event_log",
]

# Part 2 section 6.2: the value that starts every TPMS_ATTEST the TPM signs.
TPM_GENERATED_VALUE = 0xFF544347

# Part 2 section 6.9 (TPM_ST).
ST_ATTEST_CERTIFY = 0x8017
ST_ATTEST_QUOTE = 0x8018
ST_ATTEST_TIME = 0x8019

# Part 2 section 6.3 (TPM_ALG_ID).
ALG_RSA = 0x0001
ALG_NULL = 0x0010
ALG_ECC = 0x0023
ALG_RSASSA = 0x0014
ALG_RSAPSS = 0x0016
ALG_ECDSA = 0x0018
ALG_ECDAA = 0x001A

# Part 2 section 6.4 (TPM_ECC_CURVE).
_CURVES: dict[int, tuple[str, type[ec.EllipticCurve], int]] = {
    0x0003: ("P-256", ec.SECP256R1, 32),
    0x0004: ("P-384", ec.SECP384R1, 48),
    0x0005: ("P-521", ec.SECP521R1, 66),
}

#: Part 2 section 8.3 (TPMA_OBJECT): the attribute bits this package reads.
ATTRIBUTE_BITS: Mapping[str, int] = {
    "fixedTPM": 1 << 1,
    "stClear": 1 << 2,
    "fixedParent": 1 << 4,
    "sensitiveDataOrigin": 1 << 5,
    "userWithAuth": 1 << 6,
    "adminWithPolicy": 1 << 7,
    "noDA": 1 << 10,
    "encryptedDuplication": 1 << 11,
    "restricted": 1 << 16,
    "decrypt": 1 << 17,
    "sign": 1 << 18,
}

# Part 2 bounds: TPMU_HA is at most 64 bytes (SHA-512), TPM2B_NAME adds the
# two-byte algorithm, TPM2B_PUBLIC_KEY_RSA holds a 4096-bit modulus and
# TPM2B_ECC_PARAMETER a P-521 coordinate. PCR_SELECT_MAX is 3 on a PC Client
# TPM (24 PCRs); 4 leaves room for TPMs with 32.
_MAX_DIGEST = 64
_MAX_NAME = 66
_MAX_RSA = 512
_MAX_ECC = 66
_MAX_PCR_SELECT = 4
_MAX_BANKS = 16


@dataclass(frozen=True)
class HashAlgorithm:
    """A TPM_ALG_ID hash algorithm and its ``cryptography`` counterpart."""

    alg_id: int
    name: str
    size: int
    legacy: bool

    def new(self) -> hashes.HashAlgorithm:
        """A fresh ``cryptography`` hash object for signature checks."""
        return _HASH_CLASSES[self.name]()

    def digest(self, data: bytes) -> bytes:
        """The digest of ``data``."""
        return hashlib.new(self.name, data).digest()


_HASH_CLASSES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}

#: Part 2 section 6.3: the hash algorithms supported, keyed by TPM_ALG_ID.
HASH_ALGORITHMS: Mapping[int, HashAlgorithm] = {
    0x0004: HashAlgorithm(0x0004, "sha1", 20, True),
    0x000B: HashAlgorithm(0x000B, "sha256", 32, False),
    0x000C: HashAlgorithm(0x000C, "sha384", 48, False),
    0x000D: HashAlgorithm(0x000D, "sha512", 64, False),
}
_HASH_BY_NAME = {h.name: h for h in HASH_ALGORITHMS.values()}


def hash_by_id(alg_id: int) -> HashAlgorithm:
    """The hash algorithm with this TPM_ALG_ID.

    Raises ``EvidenceError("unsupported")`` for any other value,
    SM3_256 included.
    """
    found = HASH_ALGORITHMS.get(alg_id)
    if found is None:
        raise EvidenceError(
            "unsupported", f"hash algorithm 0x{alg_id:04x} not supported"
        )
    return found


def hash_by_name(name: str) -> HashAlgorithm:
    """The hash algorithm named ``sha1``, ``sha256``, ``sha384`` or ``sha512``."""
    found = _HASH_BY_NAME.get(name)
    if found is None:
        raise EvidenceError("unsupported", f"hash {name!r} not supported")
    return found


def _malformed(what: str) -> EvidenceError:
    return EvidenceError("malformed", what)


class _Reader:
    """A cursor over a big-endian TPM structure that refuses to overrun."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.pos = 0
        self.what = what

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise _malformed(f"{self.what} is truncated")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        value: int = struct.unpack(">H", self.take(2))[0]
        return value

    def u32(self) -> int:
        value: int = struct.unpack(">I", self.take(4))[0]
        return value

    def u64(self) -> int:
        value: int = struct.unpack(">Q", self.take(8))[0]
        return value

    def tpm2b(self, limit: int, label: str) -> bytes:
        size = self.u16()
        if size > limit:
            raise _malformed(f"{self.what}: {label} longer than {limit} bytes")
        return self.take(size)

    def end(self) -> None:
        if self.pos != len(self.data):
            raise _malformed(f"{self.what} has {len(self.data) - self.pos} extra bytes")


@dataclass(frozen=True)
class Public:
    """A parsed ``TPMT_PUBLIC`` (Part 2 section 12.2.4) of an RSA or ECC key.

    ``raw`` is the exact marshalled structure, from which the Name is
    computed. ``symmetric``/``sym_bits``/``sym_mode`` describe the inner
    wrapping of a storage key (an EK's AES-128-CFB, for example), ALG_NULL
    for a signing key. ``scheme``/``scheme_hash`` are the key's signing scheme and its
    hash (``ALG_NULL`` when the key leaves the choice to each command).
    """

    raw: bytes
    type: int
    name_alg: int
    attributes: int
    auth_policy: bytes
    symmetric: int
    sym_bits: int
    sym_mode: int
    scheme: int
    scheme_hash: int
    rsa_bits: int = 0
    rsa_exponent: int = 0
    rsa_modulus: bytes = b""
    curve: int = 0
    ecc_x: bytes = b""
    ecc_y: bytes = b""

    def has(self, attribute: str) -> bool:
        """Whether the named TPMA_OBJECT bit is set."""
        return bool(self.attributes & ATTRIBUTE_BITS[attribute])

    def attribute_names(self) -> list[str]:
        """The names of the TPMA_OBJECT bits set, in bit order."""
        return [n for n, bit in ATTRIBUTE_BITS.items() if self.attributes & bit]

    @property
    def name(self) -> bytes:
        """The Name: nameAlg, then its digest of ``raw`` (Part 1 section 16)."""
        algorithm = hash_by_id(self.name_alg)
        return struct.pack(">H", self.name_alg) + algorithm.digest(self.raw)

    def public_key(self) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
        """The key as a ``cryptography`` public key.

        Raises ``EvidenceError("malformed")`` when the numbers do
        not form a valid key (an ECC point off its curve, for example).
        """
        try:
            if self.type == ALG_RSA:
                # Part 2, TPMS_RSA_PARMS: an exponent of zero means 2^16 + 1.
                exponent = self.rsa_exponent or 65537
                modulus = int.from_bytes(self.rsa_modulus, "big")
                return rsa.RSAPublicNumbers(exponent, modulus).public_key()
            _, curve, _ = _CURVES[self.curve]
            point = ec.EllipticCurvePublicNumbers(
                int.from_bytes(self.ecc_x, "big"),
                int.from_bytes(self.ecc_y, "big"),
                curve(),
            )
            return point.public_key()
        except ValueError as exc:
            raise _malformed("TPMT_PUBLIC does not hold a valid public key") from exc

    def jwk(self) -> dict[str, str]:
        """The public key as the RFC 7517 members RFC 7638 thumbprints hash."""
        if self.type == ALG_RSA:
            exponent = self.rsa_exponent or 65537
            e = exponent.to_bytes((exponent.bit_length() + 7) // 8, "big")
            n = _b64url(self.rsa_modulus.lstrip(b"\0"))
            return {"kty": "RSA", "n": n, "e": _b64url(e)}
        crv, _, size = _CURVES[self.curve]
        # RFC 7518 section 6.2.1.2: coordinates are the full field size, so a
        # TPM that dropped leading zero bytes is padded back here.
        return {
            "kty": "EC",
            "crv": crv,
            "x": _b64url(self.ecc_x.rjust(size, b"\0")),
            "y": _b64url(self.ecc_y.rjust(size, b"\0")),
        }


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _sym_def_object(r: _Reader) -> tuple[int, int, int]:
    # Part 2, TPMT_SYM_DEF_OBJECT: keyBits and mode follow
    # any algorithm other than TPM_ALG_NULL.
    algorithm = r.u16()
    if algorithm == ALG_NULL:
        return algorithm, 0, ALG_NULL
    return algorithm, r.u16(), r.u16()


def _scheme(r: _Reader) -> tuple[int, int]:
    # Part 2, TPMT_RSA_SCHEME and TPMT_ECC_SCHEME: every scheme but NULL
    # and RSAES carries a hash; ECDAA adds a 16-bit commit count.
    scheme = r.u16()
    if scheme in (ALG_NULL, 0x0015):
        return scheme, ALG_NULL
    scheme_hash = r.u16()
    if scheme == ALG_ECDAA:
        r.u16()
    return scheme, scheme_hash


def parse_public(raw: bytes) -> Public:
    """Parse a marshalled ``TPMT_PUBLIC`` (Part 2 section 12.2.4).

    Only RSA and ECC keys are accepted: KEYEDHASH and SYMCIPHER objects
    never sign attestation evidence or JWTs.
    """
    r = _Reader(raw, "TPMT_PUBLIC")
    key_type = r.u16()
    name_alg = r.u16()
    attributes = r.u32()
    auth_policy = r.tpm2b(_MAX_DIGEST, "authPolicy")
    if key_type not in (ALG_RSA, ALG_ECC):
        raise EvidenceError(
            "unsupported", f"object type 0x{key_type:04x} is not RSA or ECC"
        )
    symmetric, sym_bits, sym_mode = _sym_def_object(r)
    scheme, scheme_hash = _scheme(r)
    common: dict[str, Any] = {
        "raw": raw,
        "type": key_type,
        "name_alg": name_alg,
        "attributes": attributes,
        "auth_policy": auth_policy,
        "symmetric": symmetric,
        "sym_bits": sym_bits,
        "sym_mode": sym_mode,
        "scheme": scheme,
        "scheme_hash": scheme_hash,
    }
    if key_type == ALG_RSA:
        bits = r.u16()
        exponent = r.u32()
        modulus = r.tpm2b(_MAX_RSA, "RSA modulus")
        r.end()
        if len(modulus) * 8 != bits:
            raise _malformed("TPMT_PUBLIC: RSA modulus size differs from keyBits")
        return Public(
            **common, rsa_bits=bits, rsa_exponent=exponent, rsa_modulus=modulus
        )
    curve = r.u16()
    kdf = r.u16()
    if kdf != ALG_NULL:
        r.u16()
    x = r.tpm2b(_MAX_ECC, "ECC x")
    y = r.tpm2b(_MAX_ECC, "ECC y")
    r.end()
    if curve not in _CURVES:
        raise EvidenceError("unsupported", f"curve 0x{curve:04x}")
    return Public(**common, curve=curve, ecc_x=x, ecc_y=y)


@dataclass(frozen=True)
class QuoteInfo:
    """``TPMS_QUOTE_INFO`` (Part 2 section 10.12).

    ``selection`` lists ``(hash TPM_ALG_ID, PCR indexes ascending)`` in the
    order the TPM concatenated the PCRs when it computed ``pcr_digest``.
    """

    selection: tuple[tuple[int, tuple[int, ...]], ...]
    pcr_digest: bytes


@dataclass(frozen=True)
class CertifyInfo:
    """``TPMS_CERTIFY_INFO`` (Part 2 section 10.12)."""

    name: bytes
    qualified_name: bytes


@dataclass(frozen=True)
class Attest:
    """``TPMS_ATTEST`` (Part 2 section 10.12) of a quote, certify or time.

    ``time`` is the TPM's time in milliseconds of a TPM2_GetTime attest
    (``TPMS_TIME_ATTEST_INFO``, Part 2 section 10.11); the outer
    ``clock``, ``reset_count`` and ``restart_count`` come from
    ``TPMS_CLOCK_INFO`` (Part 2 section 10.11).
    """

    raw: bytes
    magic: int
    type: int
    qualified_signer: bytes
    extra_data: bytes
    clock: int
    reset_count: int
    restart_count: int
    safe: bool
    firmware_version: int
    quote: QuoteInfo | None = None
    certify: CertifyInfo | None = None
    time: int | None = None


def _pcr_selection(r: _Reader) -> tuple[tuple[int, tuple[int, ...]], ...]:
    # Part 2 section 10.9.7 (TPML_PCR_SELECTION) of 10.6.2 (TPMS_PCR_SELECTION):
    # bit n of byte k selects PCR 8k + n.
    count = r.u32()
    if count > _MAX_BANKS:
        raise _malformed("TPML_PCR_SELECTION lists too many banks")
    banks = []
    for _ in range(count):
        algorithm = r.u16()
        size = r.u8()
        if size > _MAX_PCR_SELECT:
            raise _malformed("TPMS_PCR_SELECTION sizeofSelect too large")
        bitmap = r.take(size)
        indexes = tuple(
            8 * k + n
            for k, byte in enumerate(bitmap)
            for n in range(8)
            if byte >> n & 1
        )
        banks.append((algorithm, indexes))
    return tuple(banks)


def marshal_pcr_selection(selection: tuple[tuple[int, tuple[int, ...]], ...]) -> bytes:
    """Marshal a ``TPML_PCR_SELECTION`` (Part 2 section 10.9.7).

    The bitmap is three bytes (PC Client TPMs) unless a PCR above 23 is
    selected.
    """
    out = struct.pack(">I", len(selection))
    for algorithm, indexes in selection:
        size = max(3, (max(indexes, default=0) // 8) + 1)
        bitmap = bytearray(size)
        for index in indexes:
            bitmap[index // 8] |= 1 << (index % 8)
        out += struct.pack(">HB", algorithm, size) + bytes(bitmap)
    return out


def parse_attest(raw: bytes) -> Attest:
    """Parse a marshalled ``TPMS_ATTEST`` of type QUOTE, CERTIFY or TIME.

    The magic and type are returned, not checked, so that the caller can
    name the failure; other attestation types raise ``malformed``.
    """
    r = _Reader(raw, "TPMS_ATTEST")
    magic = r.u32()
    kind = r.u16()
    signer = r.tpm2b(_MAX_NAME, "qualifiedSigner")
    extra = r.tpm2b(_MAX_NAME, "extraData")
    clock, reset, restart, safe = r.u64(), r.u32(), r.u32(), r.u8()
    firmware = r.u64()
    quote = certify = None
    tpm_time = None
    if kind == ST_ATTEST_QUOTE:
        selection = _pcr_selection(r)
        quote = QuoteInfo(selection, r.tpm2b(_MAX_DIGEST, "pcrDigest"))
    elif kind == ST_ATTEST_CERTIFY:
        name = r.tpm2b(_MAX_NAME, "name")
        certify = CertifyInfo(name, r.tpm2b(_MAX_NAME, "qualifiedName"))
    elif kind == ST_ATTEST_TIME:
        # TPMS_TIME_ATTEST_INFO repeats the clock inside TPMS_TIME_INFO,
        # then the firmware version; only the time itself is new.
        tpm_time = r.u64()
        r.take(8 + 4 + 4 + 1 + 8)
    else:
        raise _malformed(f"TPMS_ATTEST type 0x{kind:04x} is not QUOTE, CERTIFY or TIME")
    r.end()
    if safe > 1:
        raise _malformed("TPMS_CLOCK_INFO.safe is not a TPMI_YES_NO")
    return Attest(
        raw=raw,
        magic=magic,
        type=kind,
        qualified_signer=signer,
        extra_data=extra,
        clock=clock,
        reset_count=reset,
        restart_count=restart,
        safe=bool(safe),
        firmware_version=firmware,
        quote=quote,
        certify=certify,
        time=tpm_time,
    )


@dataclass(frozen=True)
class Signature:
    """``TPMT_SIGNATURE`` (Part 2 section 11.3.4) of an RSA or ECDSA key.

    ``value`` is the RSA signature; ``r``/``s`` the ECDSA integers.
    """

    sig_alg: int
    hash_alg: int
    value: bytes = b""
    r: int = 0
    s: int = 0


def parse_signature(raw: bytes) -> Signature:
    """Parse a marshalled ``TPMT_SIGNATURE`` of RSASSA, RSAPSS or ECDSA."""
    r = _Reader(raw, "TPMT_SIGNATURE")
    sig_alg = r.u16()
    if sig_alg in (ALG_RSASSA, ALG_RSAPSS):
        hash_alg = r.u16()
        value = r.tpm2b(_MAX_RSA, "RSA signature")
        r.end()
        return Signature(sig_alg, hash_alg, value=value)
    if sig_alg == ALG_ECDSA:
        hash_alg = r.u16()
        sig_r = r.tpm2b(_MAX_ECC, "signatureR")
        sig_s = r.tpm2b(_MAX_ECC, "signatureS")
        r.end()
        return Signature(
            sig_alg,
            hash_alg,
            r=int.from_bytes(sig_r, "big"),
            s=int.from_bytes(sig_s, "big"),
        )
    raise EvidenceError(
        "unsupported", f"signature algorithm 0x{sig_alg:04x} not supported"
    )


# TCG PC Client Platform Firmware Profile, event types: those that
# are recorded but never extended into a PCR.
EV_NO_ACTION = 0x00000003
_SPEC_ID_SIGNATURE = b"Spec ID Event03\0"
_STARTUP_LOCALITY_SIGNATURE = b"StartupLocality\0"
_MAX_EVENT_DATA = 1 << 20
_MAX_EVENTS = 1 << 16


@dataclass(frozen=True)
class EventLogEvent:
    """One measured event: PCR index, type, digest per bank, event data."""

    pcr: int
    event_type: int
    digests: Mapping[int, bytes]
    data: bytes


@dataclass(frozen=True)
class EventLog:
    """A parsed TCG event log.

    ``crypto_agile`` is true for a log in the TCG_PCR_EVENT2 format (its
    first event is a ``Spec ID Event03``), false for the SHA-1-only format.
    ``algorithms`` are the banks the log records; ``startup_locality`` is
    the locality PCR 0 started from (0 unless a StartupLocality event says
    otherwise).
    """

    crypto_agile: bool
    algorithms: tuple[int, ...]
    events: tuple[EventLogEvent, ...]
    startup_locality: int = 0
    header: EventLogEvent | None = field(default=None, repr=False)


class _LogReader:
    """A little-endian cursor over an event log."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise EvidenceError("malformed", "event log is truncated")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        value: int = struct.unpack("<H", self.take(2))[0]
        return value

    def u32(self) -> int:
        value: int = struct.unpack("<I", self.take(4))[0]
        return value

    def data_block(self) -> bytes:
        size = self.u32()
        if size > _MAX_EVENT_DATA:
            raise EvidenceError("malformed", "event data too large")
        return self.take(size)

    @property
    def done(self) -> bool:
        return self.pos >= len(self.data)


def _sha1_event(r: _LogReader) -> EventLogEvent:
    # TCG_PCClientPCREvent: pcrIndex, eventType, SHA-1 digest, event data.
    pcr, event_type = r.u32(), r.u32()
    digest = r.take(20)
    return EventLogEvent(pcr, event_type, {0x0004: digest}, r.data_block())


def _spec_id(data: bytes) -> dict[int, int]:
    # TCG_EfiSpecIDEvent (PC Client Platform Firmware Profile): the banks the
    # log records and each digest size, which the TCG_PCR_EVENT2 records need
    # in order to be parsed at all.
    r = _LogReader(data)
    r.take(16)
    r.u32()
    r.take(4)
    count = r.u32()
    if count == 0 or count > _MAX_BANKS:
        raise EvidenceError("malformed", "bad Spec ID algorithm count")
    sizes = {}
    for _ in range(count):
        alg, size = r.u16(), r.u16()
        if size > _MAX_DIGEST:
            raise EvidenceError("malformed", "bad Spec ID digest size")
        sizes[alg] = size
    vendor = r.u8()
    r.take(vendor)
    if not r.done:
        raise EvidenceError("malformed", "Spec ID event has extra bytes")
    return sizes


def parse_event_log(raw: bytes) -> EventLog:
    """Parse a TCG event log, SHA-1 format or crypto-agile.

    Raises ``EvidenceError("malformed")`` when the log is
    truncated, lists a digest of a bank its header did not declare, or
    exceeds 65536 events.
    """
    r = _LogReader(raw)
    first = _sha1_event(r)
    agile = first.event_type == EV_NO_ACTION and first.data[:16] == _SPEC_ID_SIGNATURE
    events: list[EventLogEvent] = []
    locality = 0
    if not agile:
        events.append(first)
        while not r.done:
            events.append(_sha1_event(r))
            if len(events) > _MAX_EVENTS:
                raise EvidenceError("malformed", "too many events")
        return EventLog(False, (0x0004,), tuple(events), 0, None)

    sizes = _spec_id(first.data)
    while not r.done:
        pcr, event_type = r.u32(), r.u32()
        count = r.u32()
        if count > len(sizes):
            raise EvidenceError("malformed", "too many digests in event")
        digests = {}
        for _ in range(count):
            alg = r.u16()
            if alg not in sizes:
                raise EvidenceError("malformed", "undeclared digest bank")
            digests[alg] = r.take(sizes[alg])
        data = r.data_block()
        if event_type == EV_NO_ACTION and data[:16] == _STARTUP_LOCALITY_SIGNATURE:
            # The Firmware Profile's StartupLocality event: PCR 0 starts from the
            # locality the H-CRTM or S-CRTM ran in rather than from zeros.
            if len(data) != 17:
                raise EvidenceError("malformed", "bad StartupLocality")
            locality = data[16]
        events.append(EventLogEvent(pcr, event_type, digests, data))
        if len(events) > _MAX_EVENTS:
            raise EvidenceError("malformed", "too many events")
    return EventLog(True, tuple(sizes), tuple(events), locality, first)


def _initial_pcr(index: int, size: int, locality: int) -> bytes:
    # PC Client Platform TPM Profile: PCRs 17 to 22 are reset
    # to all ones at TPM start-up (only a dynamic launch zeroes them); PCR 0
    # carries the start-up locality in its last byte.
    if 17 <= index <= 22:
        return b"\xff" * size
    if index == 0:
        return bytes(size - 1) + bytes([locality])
    return bytes(size)


def replay_event_log(log: EventLog) -> dict[int, dict[int, bytes]]:
    """Recompute PCR values by extending each event's digest in order.

    Returns ``{TPM_ALG_ID: {PCR index: value}}`` for every bank the log
    records and every PCR with at least one extended event (TPM2_PCR_Extend,
    Part 3 section 22.2: new = H(old || digest)). EV_NO_ACTION events are
    skipped, as the firmware never extended them.
    """
    values: dict[int, dict[int, bytes]] = {alg: {} for alg in log.algorithms}
    for event in log.events:
        if event.event_type == EV_NO_ACTION:
            continue
        for alg, digest in event.digests.items():
            algorithm = HASH_ALGORITHMS.get(alg)
            if algorithm is None:
                # A bank this verifier cannot hash (SM3) is not replayed;
                # its PCRs are then simply absent from the result.
                continue
            if len(digest) != algorithm.size:
                raise EvidenceError("malformed", "digest of wrong size")
            bank = values[alg]
            old = bank.get(event.pcr)
            if old is None:
                old = _initial_pcr(event.pcr, algorithm.size, log.startup_locality)
            bank[event.pcr] = algorithm.digest(old + digest)
    return {alg: bank for alg, bank in values.items() if bank}
