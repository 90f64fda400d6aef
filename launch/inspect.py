"""What the loader sees in a folder of images, before any training: the first command to run on one's own folder.

  python launch/inspect.py --images=DIR [--out=FILE.csv] [--page=0]

Prints one CSV row per image file (path, readable, height, width, dtype, pages, vendor, instrument, pixel_size_nm,
pixel_size_source, voltage_kv, magnification, detector, info_bar_rows, info_bar_source, problems; empty where
unknown), or writes them to --out, then a short summary: how many files, which pixel sizes and info bars, and what a
sweep on the folder would refuse and why.
"""
# Nothing is imported above the name test below: see there.
import sys


def _stand_aside_for_the_standard_library() -> None:
  """Python puts a script's own folder first on sys.path, so in every launcher here (this one too) `import inspect`,
  which dataclasses, absl and jax all do, finds this file. Imported under that name, it loads the standard
  library's module in its place: the import system hands the importer what sys.modules then holds."""
  import importlib.machinery
  import importlib.util
  import os
  here = os.path.dirname(os.path.abspath(__file__))
  spec = importlib.machinery.PathFinder.find_spec(
      "inspect", [p for p in sys.path if os.path.abspath(p or os.curdir) != here])
  module = importlib.util.module_from_spec(spec)
  sys.modules["inspect"] = module
  spec.loader.exec_module(module)


def main(argv):
  del argv
  import os
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


if __name__ == "inspect":
  _stand_aside_for_the_standard_library()
elif __name__ == "__main__":
  from absl import flags

  from copper_jax import cli

  _IMAGES = flags.DEFINE_string("images", None, "Folder of images (searched recursively).", required=True)
  _OUT = flags.DEFINE_string("out", None, "CSV file for the rows (must not exist yet); default: print them.")
  _PAGE = flags.DEFINE_integer("page", 0, "Page of multi-page files to read, as data.page.", lower_bound=0)
  cli.run(main)
