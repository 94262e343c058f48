"""Errors a user can cause, with one sentence a student understands."""


class ConfigError(ValueError):
    """A spec, argument or file that cannot work; the message names the field and a fix."""
