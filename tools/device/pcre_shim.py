"""Device-only stand-in for pypcre: the subset of `pcre` that gptqmodel 7.6 calls, on Python's re."""

import enum
import re

Pattern = re.Pattern
escape = re.escape
split = re.split


class Flag(enum.IntFlag):
    CASELESS = re.IGNORECASE
    IGNORECASE = re.IGNORECASE
    MULTILINE = re.MULTILINE
    DOTALL = re.DOTALL
    VERBOSE = re.VERBOSE
    EXTENDED = re.VERBOSE


def compile(pattern, flags=0):  # noqa: A001 - the name pcre uses
    return re.compile(pattern, int(flags))
