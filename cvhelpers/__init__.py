"""cvhelpers: the tested helper library behind the CV Cookbook notebooks.

Importing the package is cheap: submodules are imported where they are used, so
``cvhelpers.env.setup()`` can set the offline switches before heavy libraries load.
"""

__version__ = "0.1.0"
