"""The shapes the synthetic sample can draw (``sample.classes`` picks among them).

A module of its own, without imports, so that params can validate against the list without
loading the generator (NumPy, Pillow); pipeline/data/sample.py draws each of them.
"""

SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")
