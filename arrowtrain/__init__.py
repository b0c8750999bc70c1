"""arrowtrain: the one command over the whole toolkit (`arrowtrain --help`).

This package sits at the top of the one-way street (data_tools -> pretrain -> launch ->
arrowtrain): cli.py dispatches, commands/ holds one module per user command (its parser and
what only it uses; code that others use too lives in pretrain/ and data_tools/), demos/ the
end-to-end demos. Nothing below imports it."""

from pretrain import __version__

__all__ = ["__version__"]
