"""Run the service: `python -m <package>`; settings come from HERALD_<SERVICE>_* variables."""

from herald_kit import serve
from herald_voice_sender.app import create_app
from herald_voice_sender.config import Settings


def main() -> None:
    """Serve until stopped."""
    serve(create_app, Settings())


if __name__ == "__main__":
    main()
