"""What the loader sees in a folder of images, before any training: the first command to run on one's own folder.

  python launch/inspect_images.py --images=DIR [--out=FILE.csv] [--page=0]

Prints one CSV row per image file (path, readable, height, width, dtype, pages, vendor, instrument, pixel_size_nm,
pixel_size_source, voltage_kv, magnification, detector, info_bar_rows, info_bar_source, problems; empty where
unknown), or writes them to --out, then a short summary: how many files, which pixel sizes and info bars, and what a
sweep on the folder would refuse and why. (Not `inspect.py`: a script of that name in launch/ would stand in for
Python's own `inspect` module in every launcher here.)
"""
import os
import sys

from absl import flags

from copper_jax import cli

_IMAGES = flags.DEFINE_string("images", None, "Folder of images (searched recursively).", required=True)
_OUT = flags.DEFINE_string("out", None, "CSV file for the rows (must not exist yet); default: print them.")
_PAGE = flags.DEFINE_integer("page", 0, "Page of multi-page files to read, as data.page.", lower_bound=0)


def main(argv):
  del argv
  from copper_jax.data import inspection
  from copper_jax.errors import UserError
  from copper_jax.store import workdir
  if not os.path.isdir(_IMAGES.value):
    raise UserError(f"--images={_IMAGES.value}: not a folder; point it at the folder of images")
  if _OUT.value and os.path.lexists(_OUT.value):
    raise UserError(f"--out={_OUT.value} exists: choose another file or delete it (it is never overwritten)")
  rows, summary = inspection.inspect_folder(_IMAGES.value, page=_PAGE.value)
  text = inspection.rows_csv(rows)
  if _OUT.value:
    workdir.atomic_write_text(_OUT.value, text)
  else:
    sys.stdout.write(text)
  print("\n".join(summary) + (f"\nrows: {_OUT.value}" if _OUT.value else ""))


if __name__ == "__main__":
  cli.run(main)
