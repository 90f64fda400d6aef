"""Write a synthetic SEM set of roughened copper whose smoothed-area fraction per stress time is known.

  python launch/make_synthetic.py --out=/tmp/copper_demo --preset=demo --f_true=sqrt --seed=0
  python launch/make_synthetic.py --out=/tmp/copper_control --preset=demo --confounded  # label carried by blur
  python launch/make_synthetic.py --out=/tmp/facets --preset=demo --texture=facets  # another surface model
"""
from absl import app
from absl import flags

from copper_jax import cli
from copper_jax.data import synthetic

_OUT = flags.DEFINE_string("out", None, "Folder to write images/, masks/ and manifest.json into (new or empty).",
                           required=True)
_PRESET = flags.DEFINE_string("preset", "demo", f"Set size: one of {', '.join(synthetic.PRESETS)}.")
_F_TRUE = flags.DEFINE_string("f_true", "sqrt", f"True smoothed fraction vs stress time: one of "
                              f"{', '.join(synthetic.F_TRUE)}.")
_TEXTURE = flags.DEFINE_enum("texture", "copper", synthetic.TEXTURES, "Surface model: copper (nodular relief), "
                              "or one where smoothed and rough differ in one cue only: frequency, facets (flat grains "
                              "larger than the default receptive field), contrast; varied: copper with grain size, "
                              "magnification, noise and blur varied per image.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed; the same seed writes the same bytes.")
_CONFOUNDED = flags.DEFINE_bool("confounded", False, "Negative control: constant smoothed fraction, beam blur "
                                "growing with stress time.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  manifest = synthetic.generate(_OUT.value, preset=_PRESET.value, f_true=_F_TRUE.value, seed=_SEED.value,
                                confounded=_CONFOUNDED.value, texture=_TEXTURE.value)
  images = sum(len(label["images"]) for label in manifest["labels"])
  print(f"wrote {images} images in {len(manifest['labels'])} stress-time folders to {_OUT.value} "
        f"(f_true={manifest['f_true']}, texture={manifest['texture']}, seed={manifest['seed']})")


if __name__ == "__main__":
  cli.run(main)  # one-line errors: a bad --out, a full disk
