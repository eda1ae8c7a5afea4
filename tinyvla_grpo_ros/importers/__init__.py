"""Importers of policies trained elsewhere into this package's checkpoint format."""
