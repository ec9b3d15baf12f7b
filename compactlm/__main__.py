"""`python -m compactlm` runs the command-line interface."""

from compactlm.cli import main

if __name__ == "__main__":
    main()
