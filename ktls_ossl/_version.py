"""The one place the version is written: setup.py reads this file without importing the package
(importing ktls_ossl needs the compiled extension), and ``ktls_ossl.__version__`` imports it."""
__version__ = "0.1.0"
