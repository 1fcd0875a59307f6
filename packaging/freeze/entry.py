"""Entry script of the single-file executable: the same `shepherd` command as the console script."""

from shepherd.cli import main

if __name__ == "__main__":
    main(prog_name="shepherd")
