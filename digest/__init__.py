"""digest: a self-hosted daemon that emails each subscriber the new papers that matter to them."""

__version__ = "0.1.0"
