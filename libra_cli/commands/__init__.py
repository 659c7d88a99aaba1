"""CLI command modules. Each exposes ``register(app)``; keep logic in the core modules."""

# order = order in ``libra --help`` (the lifecycle: prepare, train, generate, evaluate, ship)
COMMAND_MODULES: list[str] = ["demo", "doctor", "download", "data", "train", "recipes", "infer", "batch", "eval", "convert", "push", "serve"]  # the lifecycle order
