"""Test and demo material built on the fly: tiny random checkpoints (:mod:`~libra_cli.testing.tiny`),
synthetic MIMIC-CXR metadata and report trees (:mod:`~libra_cli.testing.mimic`) and synthetic
report pairs for the metrics (:mod:`~libra_cli.testing.reports`). Nothing here is downloaded."""
