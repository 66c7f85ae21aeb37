"""Errors that reach the user as one line and exit code 2."""


class ConfigError(ValueError):
    """A bad configuration key or value; the message is a single line naming key, value and what is allowed."""
