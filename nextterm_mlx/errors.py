"""The one exception type a user can cause and fix."""


class UserError(Exception):
    """Bad input, a missing or damaged file, an unreachable model.

    The message is one line that says what is wrong, quoting the offending
    value, and how to fix it; the CLI prints it on stderr and exits with 2.
    """


class LongPromptWarning(UserWarning):
    """A prompt longer than the model's training context: it runs, but its
    predictions may be poor."""
