"""What `copper_jax.predict` is built from: the image reader, the tiling, the input listing and its output names,
one predictor per workdir kind (`sweep.SweepPredictor`, `classifier.ClassifierPredictor`, the same interface), and
the writers of the files a prediction leaves."""
