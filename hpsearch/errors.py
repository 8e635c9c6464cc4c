"""The project's exception types. ``cli.py`` turns them into exit codes in one place."""


class HpsearchError(Exception):
    """Base class of every error hpsearch raises on purpose."""


class ConfigError(HpsearchError):
    """Bad input from the user (config file, flag, data, storage URL): exit status 2, nothing written."""


class StorageError(HpsearchError):
    """The study store is unreachable or refused an operation at run time: exit status 1."""


class TrialFailure(HpsearchError):
    """One trial could not run (e.g. out of memory even at the smallest micro-batch); the search goes on."""


class Diverged(HpsearchError):
    """The training loss became NaN or infinite."""
