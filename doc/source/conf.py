import os
import sys

# The options reference imports the package from this checkout (the docs
# environment does not install it).
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, "_ext"), os.path.dirname(os.path.dirname(HERE))]

project = "nova-clonedriver"
copyright = "nova-clonedriver developers"
extensions = ["optionsref"]
master_doc = "index"
exclude_patterns = []
html_theme = "alabaster"
