"""CLI command modules. Each exposes ``register(app)``; keep logic in the core modules."""

# order = order in ``libra --help``
COMMAND_MODULES: list[str] = ["infer", "batch", "eval", "data", "train", "convert", "serve"]
