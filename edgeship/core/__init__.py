"""The ground floor: errors, the run store, atomic writes, lineage and the console sink.

Every stage stands on it and it imports nothing else of edgeship (an import-linter contract
in pyproject.toml keeps it so).
"""

__version__ = "0.1.0"
