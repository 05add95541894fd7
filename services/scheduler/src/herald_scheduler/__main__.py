"""Run the service: `python -m <package>`; settings come from HERALD_<SERVICE>_* variables."""

from herald_kit import serve
from herald_scheduler.app import create_app
from herald_scheduler.config import Settings


def main() -> None:
    """Serve until stopped."""
    serve(create_app, Settings())


if __name__ == "__main__":
    main()
