"""Errors the user can fix, kept apart from bugs.

``UserError`` (and its subclasses) means the input is wrong: a config field, a data file, a
command-line flag, a workdir. Command lines print its message as one line, ``error: ...``,
without a traceback, and exit with status 2 (``deim_jax.cli.run``). Every other exception is a
bug or an environment failure and keeps its traceback. The subclasses also derive from the
builtin exception a caller would catch for the same problem.
"""


class UserError(Exception):
    """A mistake in the user's input; the message names the file/field and what is wrong."""


class ConfigError(UserError, ValueError):
    """A config field is unknown, misspelled or has a value that cannot work."""


class DataError(UserError, ValueError):
    """A data set file is malformed or disagrees with the config."""


class MissingDataError(UserError, FileNotFoundError):
    """A data set path (folder, annotation file, image) does not exist."""
