"""Run the service: `python -m <package>`; settings come from HERALD_<SERVICE>_* variables."""

from herald_kit import serve
from herald_sandbox.app import create_app
from herald_sandbox.config import Settings


def main() -> None:
    """Serve until stopped."""
    serve(create_app, Settings())


if __name__ == "__main__":
    main()
