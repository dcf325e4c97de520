"""Fixture helpers for the captures in tests/fixtures/, and the fake ESL
server (now shipped in the package as nfguard.lab.fakeesl, which
`nfguard demo` runs too)."""

from __future__ import annotations

from pathlib import Path

from nfguard.lab.fakeesl import (  # noqa: F401  (re-exported for the tests)
    ACCEPTED,
    AUTH_REQUEST,
    BYE,
    DISCONNECT,
    INVALID,
    FakeEsl,
    Row,
    api_response,
    profiles_xml,
    reg_xml,
    register_frame,
    reply,
)

FIXTURES = Path(__file__).parent / "fixtures"
REAL = FIXTURES / "freeswitch-real"
EVENT_TYPES = (b"text/event-json", b"text/event-plain")


def split_frames(data: bytes) -> list[bytes]:
    """The complete frames of a capture, each as its exact bytes."""
    frames, pos = [], 0
    while pos < len(data):
        end = data.index(b"\n\n", pos) + 2
        length = 0
        for line in data[pos:end].split(b"\n"):
            if line.startswith(b"Content-Length:"):
                length = int(line.split(b":", 1)[1])
        frames.append(data[pos:end + length])
        pos = end + length
    return frames


def event_frames(name: str) -> list[bytes]:
    """The event frames of a capture in freeswitch-real/, in order."""
    return [f for f in split_frames((REAL / name).read_bytes())
            if any(b"Content-Type: " + t in f.split(b"\n\n", 1)[0] for t in EVENT_TYPES)]
