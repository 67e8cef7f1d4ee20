"""Errors a user can act on. The CLI prints them without a traceback and exits with status 2."""


class FtlabError(Exception):
    """Bad input: a config key, a data line, a file. The message names it and says what was expected."""

    exit_code = 2


class ConfigError(FtlabError):
    """A config key is unknown, has the wrong type, or an impossible value."""


class DataError(FtlabError):
    """A data file is missing or a line of it is malformed."""


class TrainingError(Exception):
    """Training could not go on (for example a non-finite loss). Exit status 3."""

    exit_code = 3


class DiskFull(Exception):
    """No space left where ftlab writes (exit status 2). Not an FtlabError: a study stops at it rather than record the
    run failed and go on to the next, which would fail the same way."""

    exit_code = 2
