"""Compatibility layers for code written against other data layers (see ``wolfinch``)."""
