"""``python -m libra_cli`` (also what ``accelerate launch -m libra_cli`` runs)."""

from libra_cli.cli import main

if __name__ == "__main__":
    main()
