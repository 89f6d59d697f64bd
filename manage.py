#!/usr/bin/env python
"""Django's command-line utility for administrative tasks.

A bad ``RIS_*`` setting (an unknown ``RIS_MODEL_PROFILE``, an empty ``RIS_MODEL_DIR``, ...) is refused while the
settings load; it is reported in one line naming the variable, not as a traceback.
"""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "server.config.settings")
    from django.core.management import execute_from_command_line

    from workers.engine.core.errors import ConfigError

    try:
        execute_from_command_line(sys.argv)
    except ConfigError as error:
        sys.stderr.write(f"error: {error}\n")
        sys.exit(2)


if __name__ == "__main__":
    main()
