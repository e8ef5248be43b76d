"""One thin module per command: arguments, orchestration and tracking; the work is elsewhere."""
