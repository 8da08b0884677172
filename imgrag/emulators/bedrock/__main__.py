"""``python -m imgrag.emulators.bedrock``: serve the emulator until SIGTERM/SIGINT."""

import sys

from imgrag.emulators.bedrock.server import main

sys.exit(main())
