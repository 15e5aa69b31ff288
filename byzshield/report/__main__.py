"""``python -m byzshield.report``: the command line of :mod:`byzshield.report.cli`."""

from byzshield.report.cli import cli

if __name__ == "__main__":
    cli()
