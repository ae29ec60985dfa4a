"""L2C backup: PostgreSQL -> gzip -> OSS, with verify, retention, restore drills and alerts."""

__version__ = "0.1.0"
