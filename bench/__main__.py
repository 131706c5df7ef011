"""`python -m bench` runs the encode benchmark."""

from bench.encode import main

main()
