"""Feast repository (entities, feature views, sources) and online-store wiring."""
