"""The bottom layer: the typed recipe (everything a build takes) and the typed errors."""
