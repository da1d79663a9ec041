"""Offline data preparation: `python -m data_scripts.prepare` (see sources.py for the list)."""
