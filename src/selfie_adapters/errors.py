"""The one exception type for bad user input; the CLI turns it into a one-line error and exit code 2."""


class SelfieError(ValueError):
    """Bad input: the message says what was wrong, what was received and how to fix it."""
