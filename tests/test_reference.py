"""The Python reference classifier alone: no kernel, no bcc, no root.

The core lenient-parsing cases, and that the generated corpus
(tests/strategies.py) reaches every reason and straddles every limit.
tests/test_differential.py runs the same corpus through the kernel too.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest
from hypothesis import given, settings

from nfguard import consts, packets, reference

from conftest import ROOT
from strategies import (
    DST_V6,
    L2L4,
    SETTINGS,
    SMALL_SCAN,
    SWEEP_BINDINGS,
    big_cases,
    build_frame,
    fragment_cases,
    junk_cases,
    now_ns,
    ref_reason,
    sip_cases,
    sweep_frames,
)

BIND = [("1001", "pbx.example.com", "192.0.2.10", 1 << 62)]


def ref(payload: bytes, bindings=BIND, **kw):
    frame = kw.pop("frame", None) or packets.udp_frame(payload)
    return reference.classify(frame, bindings=bindings, now_ns=10**12, **kw)
    return reference.classify(frame, bindings=bindings, now_ns=10**12, **kw)


def auth_msg(value: str, header: str = "Proxy-Authorization", eol: str = "\r\n", **kw) -> bytes:
    return packets.sip_request(auth=value, header=header, eol=eol, **kw)


class TestReference:
    def test_standard_library_only(self):
        code = ("import sys; import nfguard.reference; "
                "assert not [m for m in sys.modules if m == 'bcc' or m.startswith('bcc.')]")
        subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)

    def test_bound_and_not(self):
        assert ref(packets.sip_request()).reason == "bound"
        v = ref(packets.sip_request(user="1002"))
        assert (v.reason, v.user, v.realm, v.action, v.retval) == (
            "not_bound", "1002", "pbx.example.com", "drop", 1)
        assert ref(packets.sip_request(), frame=packets.udp_frame(
            packets.sip_request(), src="192.0.2.11")).reason == "not_bound"
        expired = [("1001", "pbx.example.com", "192.0.2.10", 10**12)]
        assert ref(packets.sip_request(), bindings=expired).reason == "expired"

    @pytest.mark.parametrize("eol", ["\r\n", "\n", "\r"])
    def test_line_ends(self, eol):
        assert ref(packets.sip_request(eol=eol)).reason == "bound"
        assert ref(packets.sip_request(eol=eol, user="evil")).reason == "not_bound"

    def test_mixed_line_ends_and_leading_empty_lines(self):
        msg = packets.sip_request(user="evil").replace(b"\r\n", b"\n", 3)
        msg = msg.replace(b"\r\n", b"\r", 2)
        assert ref(b"\r\n\n\r" + msg).reason == "not_bound"
        assert ref(b"\r\n" * 32 + msg).reason == "too_many_empty_lines"
        assert ref(b"\n" * 63 + msg).reason == "not_bound"

    def test_whitespace_around_the_request_line(self):
        # sofia-sip skips SP and HT (and CR, LF) before the request line ...
        msg = packets.sip_request(user="evil")
        assert ref(b" \t\r\n " + msg).reason == "not_bound"
        assert ref(b" " * 64 + msg).reason == "too_many_empty_lines"
        # ... and SP/HT at the start of the line after it: a header, not a fold
        line, rest = msg.split(b"\r\n", 1)
        assert ref(line + b"\r\n \t" + rest).reason == "not_bound"
        hidden = (b"INVITE sip:x SIP/2.0\r\n Proxy-Authorization: Digest username=evil, "
                  b"realm=r\r\nVia: x\r\n\r\n")
        assert ref(hidden).reason == "not_bound"
        msg = b"INVITE sip:x SIP/2.0\r\n" + b" " * 16 + b"Via: x\r\n\r\n"
        assert ref(msg).reason == "scan_limit"
        assert ref(b"INVITE sip:x SIP/2.0\r\n  \r\nProxy-Authorization: Digest username=a, "
                   b"realm=b\r\n\r\n").reason == "no_credentials"

    def test_folds(self):
        # between name and colon, inside the value, after the comma
        for value_msg in [
            b"Proxy-Authorization\r\n : Digest username=\"evil\", realm=\"r\"",
            b"Proxy-Authorization: Digest\r\n username=\"evil\",\r\n\trealm=\"r\"",
            b"Proxy-Authorization: Digest username\r\n =\r\n \"evil\", realm=\"r\"",
        ]:
            msg = b"INVITE sip:x SIP/2.0\r\nVia: x\r\n" + value_msg + b"\r\n\r\n"
            assert ref(msg).reason == "not_bound", value_msg
        # a line of only spaces is a fold, not the end of the header section
        msg = (b"INVITE sip:x SIP/2.0\r\nVia: x\r\n \t\r\n"
               b"Authorization: Digest username=a, realm=b\r\n\r\n")
        assert ref(msg).reason == "not_bound"

    def test_name_case_colon_whitespace_scheme(self):
        for hdr in ["proxy-authorization", "PROXY-AUTHORIZATION", "AuThOrIzAtIoN"]:
            msg = auth_msg('Evil username="1001", realm="pbx.example.com"', header=hdr + " \t")
            assert ref(msg).reason == "bound"
            msg = auth_msg('Basic username="evil", realm="pbx.example.com"', header=hdr)
            assert ref(msg).reason == "not_bound"

    def test_parameters_any_order_case_spacing_quoting(self):
        for value in [
            'Digest realm="PBX.example.com" , USERNAME = "1001"',
            "Digest REALM=pbx.example.com,username=1001",
            'Digest nonce="x", Realm = \t"pbx.example.com",uri="sip:x",UserName=""""1001""""',
            "digest username=\"1001\",realm=pbx.example.com , qop=auth",
        ]:
            v = ref(auth_msg(value))
            assert (v.reason, v.user, v.realm) == ("bound", "1001", "pbx.example.com"), value

    def test_look_alike_headers_and_params(self):
        msg = packets.sip_request(auth="", extra_headers=[
            'Authorization-Info: nextnonce="x", username="evil", realm="r"',
            'X-Authorization: Digest username="evil", realm="r"',
        ])
        assert ref(msg).reason == "no_credentials"
        v = ref(auth_msg('Digest xusername="evil", usernames="e", username="1001", '
                         'auth-realm="evil", realm="pbx.example.com"'))
        assert v.reason == "bound"

    def test_ambiguity(self):
        cases = {
            'Digest username="1001", username="evil", realm="pbx.example.com"':
                "credential_ambiguous",
            'Digest username="1001", realm="a", REALM="pbx.example.com"': "credential_ambiguous",
            'Digest nonce="username=evil", username="1001", realm="pbx.example.com"':
                "credential_ambiguous",
            'Digest username=""1001", realm="pbx.example.com"': "credential_ambiguous",
            'Digest username=""10 01"", realm="pbx.example.com"': "credential_ambiguous",
            'Digest username=""10,01"", realm="pbx.example.com"': "credential_ambiguous",
            'Digest username="1001"", realm="pbx.example.com"': "credential_ambiguous",
            'Digest username=10"01, realm="pbx.example.com"': "credential_ambiguous",
            'Digest username="1001"x, realm="pbx.example.com"': "credential_ambiguous",
            'Digest username="1001" realm="pbx.example.com"': "credential_ambiguous",
            'Digest username=' + '"' * 8 + '1001", realm="pbx.example.com"': "credential_ambiguous",
            'Digest username=' + " " * 16 + '"1001", realm="pbx.example.com"':
                "credential_ambiguous",
            'Digest username' + " " * 16 + '="1001", realm="pbx.example.com"':
                "credential_ambiguous",
            'Digest realm="pbx.example.com"': "credential_unparsable",
            'Digest username="", realm="pbx.example.com"': "credential_unparsable",
            'Digest username="' + "a" * 65 + '", realm="pbx.example.com"': "credential_too_long",
            'Digest username="' + "a" * 64 + '", realm="' + "r" * 129 + '"': "credential_too_long",
        }
        for value, reason in cases.items():
            assert ref(auth_msg(value)).reason == reason, value
        # inside quotes a comma or a space is part of the value
        acme = [("10 01", "Acme, Inc.", "192.0.2.10", 1 << 62)]
        for value in ['Digest username="10 01", realm="Acme, Inc."',
                      'Digest username="""10 01""", realm="""Acme, Inc."""']:
            v = ref(auth_msg(value), bindings=acme)
            assert (v.reason, v.user, v.realm) == ("bound", "10 01", "acme, inc."), value
        # ... but a parameter hidden behind it still counts
        v = ref(auth_msg('Digest username="1001", realm="x, realm=y"'))
        assert v.reason == "credential_ambiguous"
        long_ok = [("a" * 64, "r" * 128, "192.0.2.10", 1 << 62)]
        msg = auth_msg('Digest username="' + "A" * 64 + '", realm=' + "R" * 128)
        assert ref(msg, bindings=long_ok).reason == "bound"

    def test_header_level_verdicts(self):
        msg = auth_msg('Digest username="1001", realm="pbx.example.com"',
                       header="Proxy-Authorization x")
        assert ref(msg).reason == "credential_unparsable"
        five = ['Authorization: Digest username="1001", realm="pbx.example.com"'] * 5
        v = ref(packets.sip_request(auth="", extra_headers=five))
        assert v.reason == "too_many_credentials"
        four = five[:3]
        assert ref(packets.sip_request(extra_headers=four)).reason == "bound"
        # several headers: all must be bound; user/realm are the failing one's
        two = ['Authorization: Digest username="evil", realm="pbx.example.com"']
        v = ref(packets.sip_request(extra_headers=two))
        assert (v.reason, v.user) == ("not_bound", "evil")

    def test_methods_and_truncation(self):
        for method in ["REGISTER", "MESSAGE"]:
            v = ref(packets.sip_request(method=method, user="evil"))
            assert v.reason == "method_not_guarded", method
        assert ref(packets.sip_request(method="MESSAGE", user="evil"),
                   methods=("INVITE", "MESSAGE")).reason == "not_bound"
        assert ref(b"invite sip:x SIP/2.0\r\n\r\n").reason == "method_not_guarded"
        assert ref(b"INVITE\tsip:x SIP/2.0\r\n\r\n").reason == "no_credentials"
        msg = packets.sip_request()
        assert ref(msg[:msg.index(b"\r\n\r\n") + 2]).reason == "headers_truncated"
        # the UDP length says more is coming than the frame holds
        msg = packets.sip_request(body="v=0\r\n" * 20)
        frame = packets.udp_frame(msg)
        assert ref(msg, frame=frame[:-40]).reason == "bound"
        assert ref(msg, frame=frame[:-len(msg) + 100]).reason == "headers_truncated"

    def test_frames(self):
        msg = packets.sip_request(user="evil")
        assert ref(msg, frame=packets.udp_frame(msg, vlans=(1, 2))).reason == "not_bound"
        assert ref(msg, frame=packets.udp_frame(msg, vlans=(1, 2, 3))).reason == "not_ip"
        assert ref(msg, frame=packets.udp_frame(msg, ip_options=b"\1" * 8)).reason == "not_bound"
        assert ref(msg, frame=packets.udp_frame(msg, src="2001:db8::1", dst=DST_V6,
                                                ext_headers=[0, 43, 60])).reason == "not_bound"
        assert ref(msg, frame=packets.udp_frame(msg, src="2001:db8::1", dst=DST_V6,
                                                ext_headers=[60] * 7)).reason == "ext_header_limit"
        assert ref(msg, frame=packets.udp_frame(msg, dport=5080)).reason == "port_not_guarded"
        assert ref(msg, trusted=("192.0.2.0/24",)).reason == "trusted"
        assert ref(msg, trusted=("::ffff:0:0/96",)).reason == "trusted"
        assert ref(msg, trusted=("2001:db8::/32",)).reason == "not_bound"
        first, later = packets.udp_fragments(msg, 200)
        assert ref(msg, frame=first).reason == "fragmented"
        assert ref(msg, frame=first, fragments="pass").reason == "fragment_passed"
        assert ref(msg, frame=later).reason == "later_fragment"
        assert ref(b"", frame=b"\0" * 13).reason == "not_ip"
        v = ref(msg, mode="monitor")
        assert (v.action, v.would, v.retval) == ("pass", "drop", 2)
        v = ref(msg, action="reject")
        assert (v.action, v.would, v.retval) == ("mark", "mark", 2)

    def test_lengths_and_fragments(self):
        msg = packets.sip_request(user="evil")
        # a first fragment holding only the UDP header proves nothing
        first, _ = packets.udp_fragments(msg, 0)
        assert ref(msg, frame=first).reason == "fragmented"
        assert ref(msg, frame=first, fragments="pass").reason == "fragment_passed"
        # UDP length 0 over IPv6: the rest of the packet (Linux delivers it)
        w = L2L4(version=6, src="2001:db8::10", udp_len_delta=None, udp_len_abs=0)
        assert ref(msg, frame=build_frame(msg, w)).reason == "not_bound"
        w = L2L4(version=4, udp_len_delta=None, udp_len_abs=0)
        assert ref(msg, frame=build_frame(msg, w)).reason == "method_not_guarded"
        # Ethernet trailer bytes are no part of the payload: they cannot end
        # the header section of a truncated datagram
        cut = msg[:msg.index(b"\r\n\r\n") + 2]
        w = L2L4(trailer=b"\r\n")
        assert ref(cut, frame=build_frame(cut, w)).reason == "headers_truncated"
        # reassembly drops a first fragment's last 1-7 bytes
        w = L2L4(frag="first", frag_keep=1.0, frag_extra=0)
        head = b"INVITE sip:x SIP/2.0\r\nVia: xyz\r\n\r\n"  # 8 + 34 = 42 bytes
        assert ref(head, frame=build_frame(head, w)).reason == "fragmented"
        w = L2L4(frag="first", frag_keep=1.0, frag_extra=6)
        assert ref(head, frame=build_frame(head, w)).reason == "fragmented"
        # the IP length bounds the packet
        w = L2L4(ip_len_delta=-2)
        assert ref(msg, frame=build_frame(msg, w)).reason == "headers_truncated"
        w = L2L4(ip_len_delta=None)
        assert ref(msg, frame=build_frame(msg, w)).reason == "not_ip"
        w = L2L4(version=6, src="2001:db8::10", ip_len_delta=None)
        assert ref(msg, frame=build_frame(msg, w)).reason == "not_bound"

    def test_scan_limits(self):
        many = ["au: 1"] * 65
        assert ref(packets.sip_request(extra_headers=many)).reason == "scan_limit"
        assert ref(packets.sip_request(extra_headers=many[:60])).reason == "bound"
        tabs = ["X: " + "\t" * 700]
        assert ref(packets.sip_request(extra_headers=tabs)).reason == "scan_limit"
        urs = 'Digest username="1001", realm="pbx.example.com", x="' + "u" * 400 + '"'
        assert ref(auth_msg(urs)).reason == "scan_limit"


# ---------------------------------------------------------------------------
# The generated corpus reaches the reasons (reference only, deterministic)
# ---------------------------------------------------------------------------

def test_corpus_reaches_reasons():
    """The generators reach every reason of the specification, and the
    interesting credential outcomes often (fixed seed: deterministic)."""
    per: dict[str, Counter] = {}

    def collect(name, strategy, n, scan_max=consts.SCAN_MAX):
        seen = per.setdefault(name, Counter())

        @settings(max_examples=n, derandomize=True, database=None, **SETTINGS)
        @given(case=strategy)
        def run(case):
            seen[ref_reason(case, scan_max)] += 1

        run()

    collect("sip", sip_cases(), 500)
    collect("fragments", fragment_cases(), 100)
    collect("junk", junk_cases(), 100)
    collect("big", big_cases(), 100, SMALL_SCAN)
    total = sum(per.values(), Counter())
    assert set(total) <= set(reference.SPEC_REASONS) <= set(consts.REASONS)
    missing = [r for r in reference.SPEC_REASONS if not total[r]]
    assert not missing, (missing, per)
    for reason in ["bound", "not_bound", "expired", "no_credentials", "credential_ambiguous",
                   "credential_unparsable", "credential_too_long", "headers_truncated"]:
        assert per["sip"][reason] >= 5, (reason, per["sip"])


def test_limit_sweeps_cross_boundaries():
    """The sweeps really do straddle their limits."""
    now = now_ns()
    seen = Counter()
    for _name, _k, frame in sweep_frames():
        seen[reference.classify(frame, bindings=[(u, r, ip, now + off) for u, r, ip, off in
                                                 SWEEP_BINDINGS], now_ns=now).reason] += 1
    for reason in ["too_many_empty_lines", "scan_limit", "credential_too_long",
                   "credential_ambiguous", "too_many_credentials", "ext_header_limit", "bound"]:
        assert seen[reason], (reason, seen)
