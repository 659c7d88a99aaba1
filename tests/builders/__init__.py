"""Test and demo material built on the fly: tiny random checkpoints (:mod:`~tests.builders.tiny`),
synthetic MIMIC-CXR metadata and report trees (:mod:`~tests.builders.mimic`) and synthetic
report pairs for the metrics (:mod:`~tests.builders.reports`). Nothing here is downloaded."""
