"""Sphinx configuration of nova-clonedriver's release notes (reno)."""

project = "nova-clonedriver Release Notes"
copyright = "nova-clonedriver developers"
extensions = ["reno.sphinxext"]
master_doc = "index"
exclude_patterns: list[str] = []
html_theme = "alabaster"
