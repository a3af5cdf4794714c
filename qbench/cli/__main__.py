"""`python -m qbench.cli ...`: the same command line as the `qbench` script."""

from qbench.cli import main

if __name__ == "__main__":
    main()
