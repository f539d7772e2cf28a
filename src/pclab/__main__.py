"""``python -m pclab`` = the ``pclab`` command."""

from pclab.cli import main

if __name__ == "__main__":
    main()
