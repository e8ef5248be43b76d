"""The augmentations ``train.augmentations`` can name (config editing sets them in
pipeline.config: pipeline/odapi/pipeline_config.py).

A module of its own, without imports, so that params can validate against the list without
loading the OD API. Each is an OD API preprocessing step whose defaults suit any detector
(``random_scale_crop_and_pad_to_square`` gets the model's input size).
"""

#: ``train.augmentations: [none]`` removes the template's augmentations.
NO_AUGMENTATION = "none"

AUGMENTATIONS = (
    "random_horizontal_flip", "random_vertical_flip", "random_rotation90",
    "random_adjust_brightness", "random_adjust_contrast", "random_adjust_hue",
    "random_adjust_saturation", "random_distort_color", "random_rgb_to_gray",
    "random_jpeg_quality", "random_black_patches", "random_image_scale",
    "random_crop_image", "ssd_random_crop", "random_scale_crop_and_pad_to_square",
)
