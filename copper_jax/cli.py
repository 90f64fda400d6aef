"""The shell every launch script runs in: absl's app.run, with user errors reported as one line.

Flags are defined in the launch scripts; this only turns a `UserError` into its message on stderr and exit
status 2, so a user sees what is wrong and how to fix it, not a traceback.
"""
import sys

from absl import app, logging

from copper_jax.errors import UserError


def run(main) -> None:
  def guarded(argv):
    # orbax logs every checkpoint step at INFO; users want the progress bar and errors.
    logging.set_verbosity(logging.WARNING)
    try:
      return main(argv)
    except UserError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)
  app.run(guarded)
