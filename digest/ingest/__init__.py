"""Ingest: turn digest files (and, later, feeds) into `PaperEntry` records.

This package owns reading input files; the parsers inside it are pure.
"""

from digest.ingest.files import read_digest_file

__all__ = ["read_digest_file"]
