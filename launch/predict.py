"""Masks, or stress-time probabilities, for new SEM images from a trained workdir.

  python launch/predict.py --workdir=runs/demo --images=new_images/ --out=predictions [--member=NAME]
  python launch/predict.py --workdir=runs/demo --out=predictions img1.tif img2.tif

A sweep workdir writes OUT/<stem>_mask.tif (8-bit, 255 = smoothed), OUT/<stem>_probability.tif and
OUT/<stem>_overlay.png per image, with the top-ranked hypothesis (every trained seed, unless --seed picks one) unless
--member names another, and OUT/samples.csv, one row per sub-folder (sample); a classifier workdir writes
OUT/<stem>_cam.png and the class probabilities. Both write OUT/summary.csv, and OUT/skipped.txt when some files could
not be read or are smaller than the net needs. OUT/about.txt says what each column means. The workdir's kind comes
from its ownership mark (.copper_jax.json).
"""
from absl import flags

from copper_jax import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "A workdir written by launch/sweep.py or launch/train.py.",
                               required=True)
_IMAGES = flags.DEFINE_multi_string("images", [], "An image folder (searched recursively) or file; repeatable. "
                                    "Files may also follow the flags.")
_OUT = flags.DEFINE_string("out", None, "Folder for the predictions (mirrors the input's sub-folders): new, empty, "
                           "or an earlier prediction's; a folder of other files is refused.", required=True)
_MEMBER = flags.DEFINE_string("member", None, "Sweep only: the hypothesis to use (default: the top-ranked).")
_SEED = flags.DEFINE_integer("seed", None, "Sweep only: one trained seed of the hypothesis (default: every seed, "
                             "with their spread).", lower_bound=0)
_TILE = flags.DEFINE_integer("tile", 0, "Sweep only: tile side in pixels (0: each image whole, in tiles of 512 "
                             "only when it would not fit in memory). Tiles overlap by the receptive field, so the "
                             "mask equals the whole-image one; whole images are faster.", lower_bound=0)
_QUIET = flags.DEFINE_bool("quiet", False, "Print only errors, skipped files and the final line.")


def main(argv):
  from copper_jax import predict
  result = predict.predict(_WORKDIR.value, list(_IMAGES.value) + argv[1:], _OUT.value, member=_MEMBER.value,
                           seed=_SEED.value, tile=_TILE.value, quiet=_QUIET.value)
  print(f"{len(result['rows'])} image(s) predicted, {len(result['skipped'])} skipped: "
        f"{_OUT.value}/{predict.SUMMARY_FILE}")


if __name__ == "__main__":
  cli.run(main, reuse_freed_memory=True)  # one model per program: see copper_jax/host_memory.py
