"""Held-out kill benchmark: trainings of architecture families the built-in rules were never
tuned on (``families``), broken late in known ways (``population``), replayed offline under
the stopping policies of ``bench.policies`` (``python -m bench.heldout``)."""
