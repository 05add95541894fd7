"""Run the service: `python -m <package>`; settings come from HERALD_<SERVICE>_* variables."""

from herald_dispatcher.app import create_app
from herald_dispatcher.config import Settings
from herald_kit import serve


def main() -> None:
    """Serve until stopped."""
    serve(create_app, Settings())


if __name__ == "__main__":
    main()
