"""curate: legally clean, privacy-safe image datasets, starting with a PASS rebuild."""

__version__ = "0.1.0"
