"""The Ray engine's Flower app for `flwr run` on the Simulation Runtime: pyproject.toml (the app),
`components` (its ServerApp and ClientApp, rebuilt from the run config), `launch` (runs it)."""
