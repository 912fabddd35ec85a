"""The one exception type for bad user input; the CLI turns it into a one-line error and exit code 2."""


class SelfieError(ValueError):
    """Bad input: the message says what was wrong, what was received and how to fix it."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message, or its type name when the message is empty (EOFError)."""
    return (str(e).splitlines() or [type(e).__name__])[0]
