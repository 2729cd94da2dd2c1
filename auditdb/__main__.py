"""`python -m auditdb` runs the command line."""

from auditdb.cli import main

main()
