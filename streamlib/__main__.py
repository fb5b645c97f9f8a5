"""``python -m streamlib``: the command line (:mod:`streamlib.cli.main`)."""

from .cli.main import main

if __name__ == "__main__":
    main()
