"""cttop: top for the Linux connection-tracking table."""

__version__ = "0.1.0"
