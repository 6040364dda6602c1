"""flcomp_app: a Flower app whose clients upload compressed model updates."""
