"""The images a prediction reads and the output names made from theirs, settled before any work.

An output name mirrors the input's sub-folders and file stem. Where that name cannot be written (a part too long
for the file system), or would be one of the run's own files (summary.csv, the ownership mark) or another input's
outputs, a short name is derived from the original instead: deterministic, so a rerun writes the same files, and
the original stays in the table's `path` column.
"""
import hashlib
import os
import re

from copper_jax.data import folder
from copper_jax.errors import UserError
from copper_jax.store import workdir

# The longest suffix a prediction appends to a stem (see `writers`).
LONGEST_SUFFIX = "_probability.tif"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def find_images(paths, out_dir: str) -> list:
  """[(file, output stem relative to the output folder)]: folders searched recursively (hidden entries, non-image
  files and `out_dir` left out), files taken as given; stems mirror the folder below the given folder, or below
  the files' common folder."""
  if not paths:
    raise UserError("no images given: pass --images=FOLDER or image files")
  out_dir = os.path.realpath(out_dir)
  found = []
  for path in paths:
    if os.path.isdir(path):
      for parent, dirs, files in os.walk(path):
        # An output folder inside the input folder would feed a rerun its own overlays.
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and os.path.realpath(os.path.join(parent, d)) != out_dir)
        for name in sorted(files):
          if not name.startswith(".") and os.path.splitext(name)[1].lower() in folder.IMAGE_EXTENSIONS:
            file = os.path.join(parent, name)
            found.append((file, os.path.splitext(os.path.relpath(file, path))[0]))
    elif os.path.exists(path):
      found.append((path, None))
    else:
      raise UserError(f"--images={path}: no such file or folder")
  loose = [f for f, stem in found if stem is None]
  if loose:
    base = os.path.commonpath([os.path.dirname(os.path.abspath(f)) for f in loose])
    stems = {f: os.path.splitext(os.path.relpath(os.path.abspath(f), base))[0] for f in loose}
    found = [(f, stem if stem is not None else stems[f]) for f, stem in found]
  return found


def short_name(original: str) -> str:
  """A short, file-system-safe name derived from `original`: its first readable characters and a hash of all."""
  digest = hashlib.sha256(os.fsencode(original)).hexdigest()[:12]
  readable = _UNSAFE.sub("_", original.encode("ascii", "replace").decode("ascii"))[:40].strip("._-")
  return f"{readable}-{digest}" if readable else digest


def _fits(part: str, limit: int, suffix: str = "") -> bool:
  return len(os.fsencode(part + suffix)) <= limit


def output_stems(found: list, out_dir: str, reserved) -> list:
  """`found` ([(file, stem)]) with every stem made writable: each folder part and the file part (with the longest
  suffix) within the file system's name limit, the whole path within its path limit, the first part none of
  `reserved` (the run's own file names), and no two images sharing outputs. Any other stem is kept as it is."""
  try:
    limit = os.pathconf(workdir_existing(out_dir), "PC_NAME_MAX")
    path_limit = os.pathconf(workdir_existing(out_dir), "PC_PATH_MAX")
  except (OSError, ValueError):
    limit, path_limit = 255, 4096
  reserved = {r.casefold() for r in reserved}
  taken, result = set(), []
  for file, stem in found:
    parts = [p for p in stem.replace(os.sep, "/").split("/") if p not in ("", ".")]
    parts = [p if _fits(p, limit) else short_name(p) for p in parts[:-1]] + [
        parts[-1] if _fits(parts[-1], limit, LONGEST_SUFFIX) else short_name(parts[-1])]
    if len(parts) > 1 and parts[0].casefold() in reserved:  # a sub-folder named like one of the run's files
      parts[0] = short_name(parts[0])
    if len(os.fsencode(os.path.join(os.path.abspath(out_dir), *parts) + LONGEST_SUFFIX)) >= path_limit:
      parts = [short_name(stem)]  # folders nested too deep to write: one short name at the top
    safe, again = os.path.join(*parts), 0
    while safe.casefold() in taken:  # a.tif beside a.png (or one file given twice): a name of the file's own
      parts[-1] = short_name(f"{os.path.basename(file)}\0{stem}\0{again}")
      safe, again = os.path.join(*parts), again + 1
    taken.add(safe.casefold())
    result.append((file, safe))
  return result


def workdir_existing(path: str) -> str:
  """The nearest existing folder at or above `path` (where the file system's limits can be asked)."""
  path = os.path.abspath(path)
  while not os.path.isdir(path):
    path = os.path.dirname(path)
  return path


def check_out_folder(out_dir: str, images) -> str:
  """The absolute output folder, refused (UserError) before any work when it is unusable (see
  `workdir.check_output_folder`), holds files copper_jax did not write or another kind of its folders
  (`workdir.check_claim`), is an input folder, or when an input lies inside it: its overlays and masks could then
  replace a user's file or be read as images by the next run. An output folder inside an input folder is fine:
  `find_images` leaves it out."""
  out_dir = workdir.check_output_folder(out_dir, "--out")
  real_out = os.path.realpath(out_dir)
  for path in images:
    real = os.path.realpath(path)
    if real == real_out or real.startswith(real_out.rstrip(os.sep) + os.sep):
      raise UserError(f"--out={out_dir} {'is' if real == real_out else 'holds'} the input {path}: outputs would "
                      f"land among the images they are made from; choose an --out folder outside the inputs")
  return workdir.check_claim(out_dir, workdir.PREDICTIONS, "--out")
