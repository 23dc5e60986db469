"""The one exception type for a user's mistake (a bad option, path, config or input file).

The command line turns a `ConfigError` into one `pruneflow: error: <field>: <what and how to fix>` line and exit
status 2; any other exception is a bug of ours and keeps its traceback (exit 1). It subclasses `ValueError` so that
pydantic validators raising it still produce a `ValidationError` with the field's path.
"""


class ConfigError(ValueError):
    """A user error: the message names the field and says how to fix it (several problems: one per line)."""
