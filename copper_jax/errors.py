"""User-facing errors: one line that names the thing and the fix.

Launch scripts catch `UserError` and print its message alone (no traceback), so every message must say what is
wrong and what to do about it.
"""


class UserError(Exception):
  """Bad input or configuration a user can fix; its message is the whole report."""


class ConfigError(UserError):
  """A config key with a wrong, impossible or unknown value."""


class DataError(UserError):
  """A dataset folder or image file that cannot be used as it is."""


class CheckpointError(UserError):
  """A checkpoint that does not belong to this config or cannot be read."""
