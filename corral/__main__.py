"""``python -m corral`` runs the CLI."""

from corral.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
