"""CLI command modules. Each exposes ``register(app)``; keep logic in the core modules."""

# order = order in ``libra --help`` (the lifecycle: prepare, train, generate, evaluate, ship)
COMMAND_MODULES: list[str] = ["demo", "doctor", "data", "train", "recipes", "infer", "batch", "eval", "convert", "serve"]  # the lifecycle order
