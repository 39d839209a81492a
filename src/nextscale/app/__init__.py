"""Front ends, a leaf of the package: the command line (``cli``, its flags generated in ``cli_args``), the study
commands (``cli_study``, ``study``) and the web demo (``demo``). Nothing in the library imports this package."""
