"""What every command-line tool shares: a bad flag is one `error:` line and exit 2, as a bad key is in train.py."""
import argparse
import sys


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str):
        sys.stderr.write(f"error: {self.prog}: {message}; see {self.prog} --help\n")
        sys.exit(2)
