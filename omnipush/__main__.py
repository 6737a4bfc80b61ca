"""`python -m omnipush` is the `omnipush` command."""

from omnipush.cli import main

main()
