"""`nfguard demo`: nfguard's main job without FreeSWITCH, in two minutes.

Builds three network namespaces (a PBX, a phone, an attacker) joined by
veth pairs, runs a stand-in PBX with digest auth and a fake FreeSWITCH
Event Socket inside the PBX namespace, and the real `nfguard run` attached
to the PBX's interfaces in enforce/drop mode. Then SIPp plays a phone that
registers and calls, and an attacker who knows the phone's password and
calls from its own address. It shows what happened and `nfguard status`,
and removes everything it created, also when interrupted. The host's own
interfaces and ruleset are never touched.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import time

from nfguard.errors import NfguardError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--action", choices=("drop", "reject"), default="drop",
                        help="what enforce mode does to the attacker's INVITE (default: drop)")


def _say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def run(args: argparse.Namespace) -> int:
    from nfguard.kernel.host import check_privileges

    check_privileges("nfguard demo")
    if shutil.which("sipp") is None:
        raise NfguardError("nfguard demo plays its phone and attacker with SIPp: "
                           "apt install sip-tester")
    from nfguard.cli.status import show
    from nfguard.lab.pbx import REALM
    from nfguard.lab.world import ADDR, USER, Lab

    def interrupted(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, interrupted)
    cred = f"{USER}@{REALM}"
    _say("building the lab: PBX, phone and attacker namespaces over veth")
    with Lab(prefix="nfgdemo") as lab:
        print(f"   phone {ADDR['phone']}, attacker {ADDR['attacker']}, PBX "
              f"{ADDR['pbx1']}/{ADDR['pbx2']} (stand-in PBX on UDP 5060, fake Event Socket)")
        lab.write_config(mode="enforce", action=args.action)
        lab.start_daemon()
        print(f"   nfguard run: attached to pbx1 and pbx2, enforce/{args.action}, "
              "first sync done")

        _say(f"the phone registers as {cred} from {ADDR['phone']} (SIPp, digest auth)")
        ok = lab.sipp("phone", "register") == 0
        t0 = time.time()
        lab.until(lambda st: st["bindings"]["bpf"] >= 1, 5, "the binding")
        print(f"   {'registered' if ok else 'REGISTER FAILED'}; bound in the kernel "
              f"{(time.time() - t0) * 1000:.0f} ms later")

        _say("the phone calls 9196")
        ok = lab.sipp("phone", "invite") == 0
        print(f"   {'call connected' if ok else 'CALL FAILED'}: "
              f"{len(lab.pbx.invites(authorized=True, src=ADDR['phone']))} INVITE with "
              "credentials reached the PBX")

        _say(f"an attacker who cracked the password calls from {ADDR['attacker']}")
        ok = lab.sipp("attacker", "invite") == 0
        got = len(lab.pbx.invites(authorized=True, src=ADDR["attacker"]))
        print(f"   {'CALL CONNECTED (not expected)' if ok else 'call failed'}: {got} INVITE "
              "with credentials reached the PBX (FreeSWITCH would have accepted it: "
              "digest auth alone does not care where it comes from)")

        _say("nfguard status")
        st = lab.until(lambda s: any(e["src"] == ADDR["attacker"]
                                     for e in s["recent_events"]), 5, "the verdict event")
        show(st)

        alerts = [line for line in open(lab.log_path) if "ALERT" in line]
        if alerts:
            _say("the daemon's log")
            print("   " + alerts[0].strip())
        _say("removing the lab (namespaces, daemon, pinned maps)")
    print("   done: nothing of the demo is left on this host")
    return 0
