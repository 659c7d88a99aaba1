"""Two-stage Libra training (``libra train align`` / ``libra train finetune``).

``recipe`` (schema, YAML, ``--set`` overrides), ``data`` (training JSON, masking, collation) and
``trainer`` (transformers' Trainer with the original checkpoint layouts). Heavy imports are lazy.
"""

from libra_cli.training.recipe import STAGES, Recipe, load_recipe, parse_overrides, save_recipe

__all__ = ["STAGES", "Recipe", "load_recipe", "parse_overrides", "save_recipe"]
