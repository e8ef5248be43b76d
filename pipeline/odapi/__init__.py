"""The only door to the OD API: templates, config editing, checkpoints, training hooks, the
detector runner, export and TFLite."""
