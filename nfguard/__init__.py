"""nfguard: SIP INVITE credential/source binding enforcement with XDP."""

__version__ = "0.1.0"
