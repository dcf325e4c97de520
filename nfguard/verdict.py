"""What the classifier decided about one packet: the kernel program's
answer (Program.test_run) and the reference classifier's, compared field
by field by the differential tests."""

from __future__ import annotations

from dataclasses import dataclass

from nfguard import consts


@dataclass(frozen=True)
class Verdict:
    action: str  # pass, drop or mark (what happened to the packet)
    reason: str  # a stable snake_case word from consts.REASONS
    would: str  # what enforce mode does (equals action outside monitor)
    user: str | None
    realm: str | None
    retval: int  # the XDP return code

    @property
    def is_verdict(self) -> bool:
        return consts.is_verdict(self.reason)
