"""``python -m pipeline <stage> ...``: see :mod:`pipeline.cli`."""
from pipeline.cli import console_main

console_main()
