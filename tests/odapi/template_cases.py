"""The templates the template tests run on, enumerated from configs/models.yaml (a template
added there is tested without editing a test; tests/odapi/test_templates.py checks that every
test looping over templates covers them all), and the cheapest input size of each."""
from __future__ import annotations

from pathlib import Path

from pipeline.odapi import pipeline_config
from pipeline.odapi import templates as zoo
from tests.odapi.test_pipeline_config import write_convert_output

#: Every template listed in configs/models.yaml.
TEMPLATES = tuple(sorted(zoo.load_specs()))
#: The templates with a TF2 model zoo archive (``model.checkpoint: zoo``).
ZOO_TEMPLATES = tuple(name for name in TEMPLATES if zoo.spec_for(name).zoo_archive)


def tiny_size(config) -> int:
    """Smallest input that keeps a training step cheap and still builds: 64 px for Faster
    R-CNN (ResNet's stride 16: 4x4 features), else 128 px; a BiFPN needs 2**(max_level + 1)
    (EfficientDet-D0: 256)."""
    if config.model.WhichOneof("model") == "faster_rcnn":
        return 64
    extractor = pipeline_config.meta_architecture(config).feature_extractor
    if "bifpn" in extractor.DESCRIPTOR.fields_by_name and extractor.HasField("bifpn"):
        return max(128, 2 ** (extractor.bifpn.max_level + 1))
    return 128


def tiny_data(folder: Path) -> Path:
    """A convert output with two classes and at most three objects per image."""
    return write_convert_output(folder, classes=2, max_objects=3)
