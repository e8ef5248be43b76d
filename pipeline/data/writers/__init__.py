"""Dataset writers: the project's records written in another format (yolo)."""
