"""Errors that reach the operator as one clear line (no traceback)."""


class NfguardError(Exception):
    """An expected failure: its message says what is wrong and what to do."""


class HeadersMissing(NfguardError):
    pass


class CompileError(NfguardError):
    pass


class AttachError(NfguardError):
    pass
