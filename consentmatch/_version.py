"""consentmatch's version, in a module of its own: results name it (`services/matching.py`)
without importing the package's root (a cycle) or reading the installed metadata (~50 ms a process)."""

__version__ = "0.1.0"
