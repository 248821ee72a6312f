"""One exception type for bad user input, so the CLI can print it without a traceback."""


class UserError(Exception):
    """Input the user can fix: a config typo, a missing file, a corrupt shard, a bad labels file.

    The message names the file, field or id and says what was expected.
    """
