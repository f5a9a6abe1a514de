"""One module per OpenSSL header, each with INCLUDES, TYPES, FUNCTIONS and CUSTOMIZATIONS.

TYPES holds types and constants, FUNCTIONS the prototypes (macros are declared as functions: in
API mode cffi calls them through a generated C wrapper, so the compiler checks every use),
CUSTOMIZATIONS any C that the extension itself adds.
"""
