"""The library's errors: each message says what is wrong and what to do about it."""


class EvomergeError(Exception):
    """Base class of every error evomerge raises on purpose."""


class DemoFamilyError(EvomergeError):
    """The demo family is missing, stale or broken."""


class CheckpointError(EvomergeError):
    """A checkpoint cannot be found or read, or may not be read without an opt-in."""


class IncompatibleModelsError(EvomergeError):
    """The models of a pool cannot be merged with each other."""


class MergeConfigError(EvomergeError):
    """A merge method or one of its parameters is unknown or out of range."""


class MemoryBudgetError(EvomergeError):
    """A merge does not fit the memory it may use, or ran out of it."""


class StorageError(EvomergeError):
    """A run's files could not be written or read: a full disk, no permission, a corrupt store."""


class CandidateError(EvomergeError):
    """One candidate could not be evaluated (its fitness is not a number, say); the run's
    ``search.on_error`` decides whether the run stops or goes on without it."""
