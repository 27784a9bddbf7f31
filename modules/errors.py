"""Errors a user can act on.

A `UserError` carries a message that says what is wrong and how to fix it. The UI shows it,
the API answers it with a 4xx and the command line prints it and exits non-zero. Anything
else that escapes is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input or a bad file: the message names the problem and the fix."""


class CheckpointError(UserError):
    """A checkpoint (or VAE) file cannot be used; the message names the file."""
