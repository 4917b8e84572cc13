"""A small AI gateway built on the public API of ``flask_gatewayz_metrics``."""
