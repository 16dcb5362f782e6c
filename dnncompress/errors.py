"""One exception type for bad user input, so the CLI can map it to exit code 2."""


class UserError(Exception):
    """Bad input from the user: the message is one line that says what was wrong and what to do."""
