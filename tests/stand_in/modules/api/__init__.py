"""Stand-in package for modules/api @ A1111 v1.10.1 (82a973c) (upstream has no __init__.py: a namespace package)."""
