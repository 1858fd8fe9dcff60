"""Register maps shipped with the firmware bridge (YAML data files)."""
