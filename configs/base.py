"""What every job's config shares: the `data` section, and building a preset as the job's base plus overrides.

A preset is a dict of dotted keys (`"train.num_steps": 300`) applied to the job's `base()`; a dict value
(`"data.split": {...}`) replaces that whole section. Each key's rule, and whether it fixes a checkpoint, is declared
in copper_jax/config_rules.py.
"""
import ml_collections

from copper_jax.data import folder


def data(split: dict) -> ml_collections.ConfigDict:
  """The default `config.data`: the user's folder of SEM images, or a generated synthetic set.

  `split` is the per-label split, counts (e.g. {"train": 40, "val": 5, "test": 5}) or fractions.
  """
  section = ml_collections.ConfigDict()
  section.root = ""                # a folder of SEM images by stress time; "" generates the synthetic set
  # Rows of SEM info bar to remove, or "auto": what each file's metadata records (FEI/Thermo [Image] ResolutionY,
  # TESCAN ImageStripSize, the Zeiss data zone; nothing where a file records none). launch/inspect.py shows
  # both. A FieldReference of type object, so that both --config.data.crop_bottom=auto and =68 parse.
  section.crop_bottom = ml_collections.FieldReference(0, field_type=object)
  section.page = 0                 # page of multi-page files to read (0: the first)
  # 0 keeps every image's pixels; X (nm) resamples every image, anti-aliased, to X nm per pixel (a set taken at
  # several magnifications then trains at one scale; prediction resamples new images the same way).
  section.pixel_size_nm = 0.0
  section.skip_unreadable = False  # skip (and list) unreadable images instead of stopping
  section.max_pixels = folder.MAX_PIXELS  # largest image (H x W) accepted, read from each file's header
  # "refuse": stop when the images' metadata give different pixel sizes (magnifications); "allow": warn only, and
  # record the sizes as they are (prediction then compares each new image with their range).
  section.mixed_pixel_sizes = "refuse"
  # "dataset": one mean and std for all images. Per-image standardisation ("image") would leak the global
  # fraction: an image's std falls as its smoothed area grows, so dividing by it rescales every pixel's noise by
  # a function of f(t), a global cue a local model could read (docs/science.md, "Why the ranking can work").
  section.standardise = "dataset"
  section.split = ml_collections.ConfigDict(split)
  section.synthetic = ml_collections.ConfigDict()
  section.synthetic.preset = "demo"
  section.synthetic.f_true = "sqrt"
  section.synthetic.texture = "copper"     # the surface model: copper | frequency | facets | contrast | varied
  section.synthetic.confounded = False
  section.synthetic.seed = 0
  section.synthetic.num_labels = 0         # 0: the preset's value
  section.synthetic.images_per_label = 0   # 0: the preset's value
  section.synthetic.size = 0               # image height and width in pixels; 0: the preset's value
  # Bends of the method's assumption (docs/science.md): each field of view's fraction scattered around f(t), and a
  # brightness (relative) and defocus (pixels of blur) drift growing with t on top of the real area change.
  section.synthetic.fraction_jitter = 0.0
  section.synthetic.drift_brightness = 0.0
  section.synthetic.drift_blur = 0.0
  return section


def build(base: ml_collections.ConfigDict, preset: str, presets: dict, where: str) -> ml_collections.ConfigDict:
  """`base` with the overrides of `presets[preset]` applied (ValueError naming `where` for an unknown preset)."""
  if preset not in presets:
    raise ValueError(f"unknown preset {preset!r} for {where}; use one of {', '.join(presets)}")
  config = base
  config.preset = preset
  for dotted, value in presets[preset].items():
    *parents, leaf = dotted.split(".")
    node = config
    for part in parents:
      node = node[part]
    if leaf not in node:
      raise KeyError(f"preset {preset!r} of {where} sets {dotted}, which the base config lacks")
    node[leaf] = ml_collections.ConfigDict(value) if isinstance(value, dict) else value
  return config
