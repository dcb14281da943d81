"""The library's errors: each message says what is wrong and what to do about it."""


class EvomergeError(Exception):
    """Base class of every error evomerge raises on purpose."""


class DemoFamilyError(EvomergeError):
    """The demo family is missing, stale or broken."""
