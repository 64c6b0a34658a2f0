"""Raw mail bytes → the parsed, size- and time-guarded view the models read."""
