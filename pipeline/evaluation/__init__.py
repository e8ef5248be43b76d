"""The test-set report: records, inference, COCO and VOC metrics, confusion, pictures, HTML."""
