"""spamd: a spam-filter daemon that scores mail with neural models trained on the site's own mail."""

__version__ = "0.1.0"
