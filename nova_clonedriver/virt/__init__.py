"""The nova adapter (depends on the engine; the engine never on it)."""
