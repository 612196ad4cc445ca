"""Errors raised by the data-curation stage."""


class CurationError(RuntimeError):
    """A curation run cannot produce a usable dataset; the message names the source or filter."""
