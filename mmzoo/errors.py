"""The error type for problems with a user's input.

Library code raises `InputError` for anything the user can fix: a missing or
empty file, a malformed annotation, unknown characters, a checkpoint from
another config. Launchers print its message as one line and exit non-zero,
without a traceback (`launch/common.py`).
"""


class InputError(Exception):
  """A problem with the user's input; the message names the file or value."""
