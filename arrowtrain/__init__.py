"""arrowtrain: the one command over the whole toolkit (`arrowtrain --help`).

This package sits at the top of the one-way street (data_tools -> pretrain -> launch ->
arrowtrain): it imports the others only to dispatch to them, and nothing imports it."""

from pretrain import __version__

__all__ = ["__version__"]
