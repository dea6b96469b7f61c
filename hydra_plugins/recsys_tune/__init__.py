"""recsys' Hydra plugin: the sweeper of `make tune` (see recsys.cli.tune)."""
