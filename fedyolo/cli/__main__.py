"""`python -m fedyolo.cli`: the same as the `fedyolo` command (tests and the demo start it this way)."""

from fedyolo.cli import main

if __name__ == "__main__":
    main()
