"""Run the service: `python -m <package>`; settings come from HERALD_<SERVICE>_* variables."""

from herald_email_sender.app import create_app
from herald_email_sender.config import Settings
from herald_kit import serve


def main() -> None:
    """Serve until stopped."""
    serve(create_app, Settings())


if __name__ == "__main__":
    main()
