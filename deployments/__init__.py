"""Ways to deploy imgrag's flows (prefect.yaml at the root declares the same ones)."""
