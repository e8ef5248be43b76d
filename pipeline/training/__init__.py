"""Training: typed inputs, the segmented loop with callbacks, progress, model folder, curves."""
