project = "nova-clonedriver"
copyright = "nova-clonedriver developers"
extensions = []
master_doc = "index"
exclude_patterns = []
html_theme = "alabaster"
