"""Model registry and weight files; `python -m curate.models download` fetches what a recipe needs."""
