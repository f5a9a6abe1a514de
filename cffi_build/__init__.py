"""Build-time only: the cffi description of ``ktls_ossl._ossl``."""
