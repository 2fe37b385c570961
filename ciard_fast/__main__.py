"""``python -m ciard_fast ...`` (what ``torchrun -m ciard_fast train`` runs)."""
from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
